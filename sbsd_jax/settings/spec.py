"""The settings of one run, as frozen dataclasses: each layer takes only its piece.

    RunSpec
      model          ModelSpec (sbsd_jax.model.spec): architecture, size, overrides, numerics
      mesh           MeshSpec: axis sizes (-1 = fill) and the logical axis rules
      distributed    DistributedSpec (sbsd_jax.runtime.distributed)
      data           DataSpec (sbsd_jax.data.examples): dataset, method, vocabulary, lengths
      batching       BatchingSpec (sbsd_jax.data.features): batch size, lengths, packing, seed
      optimizer      OptimizerSpec: optimizer, schedule, constants, clipping, total steps
      step           StepSpec: method, alpha, gradient accumulation, dropout seed and RNG
      evaluation     EvalSpec: splits, cadence, decode sizes
      checkpointing  CheckpointSpec: cadence, retention, Hugging Face export
      loop           LoopSpec: steps and logging cadence
      config_json    the user's config as JSON (written next to the checkpoints)
      causal         CausalRowsSpec (sbsd_jax.data.features) for a decoder-only student, else
                     None: template, row length, evaluation prompt length

The values come from a validated config (sbsd_jax.settings.from_config); none of these classes
has defaults, so configs/base.py is the one place defaults live.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sbsd_jax.data.examples import DataSpec
from sbsd_jax.data.features import BatchingSpec, CausalRowsSpec
from sbsd_jax.model.sharding import MESH_AXES, LogicalAxisRules
from sbsd_jax.model.spec import ModelSpec
from sbsd_jax.runtime.distributed import DistributedSpec

OPTIMIZERS: tuple[str, ...] = ("adamw", "adafactor")
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear", "linear_warmup_cosine", "rsqrt")
EXPORT_WHICH: tuple[str, ...] = ("best", "final")
RNG_IMPLS: tuple[str, ...] = ("threefry2x32", "rbg", "unsafe_rbg")


class ConfigError(ValueError):
    """A config that cannot work; the message lists each offending field and the fix."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__(
            "invalid config:\n" + "\n".join(f"  - {problem}" for problem in self.problems)
        )


class MeshShapeError(ValueError):
    """The configured mesh does not fit the devices."""


@dataclasses.dataclass(frozen=True)
class MeshSpec:
    """config.mesh and config.logical_axis_rules (resolved: () becomes the default table).

    data / fsdp / tensor: axis sizes, one of them may be -1 to take all remaining devices;
    dcn_data > 1 spreads the data axis over several slices (multi-slice TPU).
    """

    data: int
    fsdp: int
    tensor: int
    dcn_data: int
    rules: LogicalAxisRules

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        """(data, fsdp, tensor) with any -1 filled in; data includes the dcn_data factor.

        Raises MeshShapeError saying which field to change when the sizes do not fit."""
        sizes = [self.data, self.fsdp, self.tensor]
        if self.dcn_data < 1:
            raise MeshShapeError(f"config.mesh.dcn_data must be >= 1, got {self.dcn_data}")
        fill = [i for i, size in enumerate(sizes) if size == -1]
        if len(fill) > 1:
            raise MeshShapeError(
                "only one of config.mesh.data/fsdp/tensor may be -1 (fill); got "
                + ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes, strict=True))
            )
        bad = [f"{n}={s}" for n, s in zip(MESH_AXES, sizes, strict=True) if s == 0 or s < -1]
        if bad:
            raise MeshShapeError(f"config.mesh sizes must be positive or -1 (fill), got {bad}")
        if sizes[0] != -1:
            sizes[0] *= self.dcn_data  # a filled data axis already spans every slice
        fixed = int(np.prod([s for s in sizes if s != -1]))
        if fill:
            if num_devices % fixed:
                raise MeshShapeError(
                    f"the fixed mesh axes multiply to {fixed}, which does not divide the "
                    f"{num_devices} devices; change config.mesh so the product divides "
                    f"{num_devices}"
                )
            sizes[fill[0]] = num_devices // fixed
        total = int(np.prod(sizes))
        if total > num_devices:
            raise MeshShapeError(
                f"config.mesh needs data*fsdp*tensor = {'*'.join(map(str, sizes))} = {total} "
                f"devices but only {num_devices} are available; shrink config.mesh (or set one "
                "axis to -1)"
            )
        if sizes[0] % self.dcn_data:
            raise MeshShapeError(
                f"the data axis ({sizes[0]}) is not a multiple of config.mesh.dcn_data="
                f"{self.dcn_data}"
            )
        return sizes[0], sizes[1], sizes[2]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer and its learning-rate schedule (sbsd_jax.train.optimizer)."""

    name: str  # adamw | adafactor
    learning_rate: float
    lr_schedule: str
    warmup_steps: int
    end_learning_rate_fraction: float
    weight_decay: float
    adam_b1: float
    adam_b2: float
    adam_eps: float
    grad_clip_norm: float
    num_train_steps: int


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What one train step computes besides the model: the multi-task loss and its dropout."""

    method: str
    alpha: float
    grad_accum_steps: int
    seed: int  # dropout key = fold_in(key(seed, impl=rng_impl), step); also the init key
    rng_impl: str


@dataclasses.dataclass(frozen=True)
class EvalSpec:
    """Which splits are decoded, how often and how big (the final evaluation is full)."""

    splits: tuple[str, ...]
    every: int
    batch_size: int
    max_decode_length: int
    max_examples: int  # 0 = the whole split (periodic evaluations only)
    decode_rationales: bool


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
    """Checkpoint cadence and retention, and the optional Hugging Face export."""

    every: int
    keep: int
    keep_best: bool
    export_hf_dir: str
    export_which: str  # best | final


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    num_train_steps: int
    log_every: int


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, resolved once at its entry point (see the module doc)."""

    model: ModelSpec
    mesh: MeshSpec
    distributed: DistributedSpec
    data: DataSpec
    batching: BatchingSpec
    optimizer: OptimizerSpec
    step: StepSpec
    evaluation: EvalSpec
    checkpointing: CheckpointSpec
    loop: LoopSpec
    config_json: str
    causal: CausalRowsSpec | None

    def device_problems(self, num_devices: int, num_processes: int) -> list[str]:
        """The mesh fits the devices and the batches split over it (checked once the devices
        are known, i.e. after joining a multi-process job)."""
        try:
            shape = self.mesh.shape(num_devices)
        except MeshShapeError as error:
            return [str(error)]
        return batch_split_problems(
            shape,
            batch_size=self.batching.batch_size,
            grad_accum_steps=self.step.grad_accum_steps,
            eval_batch_size=self.evaluation.batch_size,
            num_devices=num_devices,
            num_processes=num_processes,
        )

    def check_devices(self, num_devices: int, num_processes: int = 1) -> None:
        """Raises ConfigError listing device_problems, if any."""
        problems = self.device_problems(num_devices, num_processes)
        if problems:
            raise ConfigError(problems)


def batch_split_problems(
    shape: tuple[int, int, int],
    *,
    batch_size: int,
    grad_accum_steps: int,
    eval_batch_size: int,
    num_devices: int,
    num_processes: int,
) -> list[str]:
    """The mesh uses the devices a multi-process run has, and batches split over it."""
    data, fsdp, tensor = shape
    problems = []
    total = data * fsdp * tensor
    if total < num_devices and num_processes > 1:
        problems.append(
            f"config.mesh uses {total} of {num_devices} devices; a multi-process run must use "
            f"all of them (set one mesh axis to -1)"
        )
    data_parallel = data * fsdp
    accum, batch = grad_accum_steps, batch_size
    if isinstance(batch, int) and isinstance(accum, int) and batch > 0 and accum > 0:
        if batch % accum:
            problems.append(
                f"config.grad_accum_steps={accum}: must divide config.batch_size={batch}"
            )
        elif (batch // accum) % data_parallel:
            needed = accum * data_parallel
            problems.append(
                f"config.batch_size={batch}: each of the {accum} micro-batch(es) "
                f"({batch // accum} examples) must split evenly over the data-parallel size "
                f"data*fsdp = {data}*{fsdp} = {data_parallel}; use a batch size that is a "
                f"multiple of {needed}, or change config.mesh / config.grad_accum_steps"
            )
        # No check against the process count: each process loads the rows its devices hold
        # (partitioning.process_batch_rows), processes sharing batch shards (a 'tensor'
        # axis across processes) load the same rows, so the rows need only split over the
        # data*fsdp shards, checked above.
    if isinstance(eval_batch_size, int) and eval_batch_size > 0 and eval_batch_size % data_parallel:
        problems.append(
            f"config.eval_batch_size={eval_batch_size}: must be a multiple of the data-parallel "
            f"size data*fsdp = {data_parallel}"
        )
    return problems
