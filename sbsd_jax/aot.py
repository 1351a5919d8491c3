"""Compile the real train step for a TPU slice we do not have, and print its memory per chip.

    python -m sbsd_jax.aot --config=configs/cqa.py --topology=v4:2x2x4 \
        --config.model=t5_v1_1_xxl --config.batch_size=32 --config.mesh.tensor=4

libtpu (`pip install "jax[tpu]==<jax version>"`) describes the topology's chips
(jax.experimental.topologies.get_topology_desc) and compiles for them on this CPU machine; the
state and batch are ShapeDtypeStructs with NamedShardings on that topology's mesh, so nothing
is allocated. XLA's memory analysis of the compiled step (arguments = parameters + optimizer
state + batch, temporaries = activations and gradients, outputs aliased to the donated
state) is printed against the chip's HBM, so a layout that does not fit is caught before
renting the slice.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import time

# libtpu looks for a TPU VM's metadata; on a CPU machine there is none and nothing to find.
os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
# Compiling touches no chip, so several AOT processes may share libtpu (no lockfile).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sbsd_jax.data.features import (  # noqa: E402
    BatchingSpec,
    batch_shapes,
    causal_batch_shapes,
)
from sbsd_jax.eval.mfu import TrainStepShape  # noqa: E402
from sbsd_jax.experiments.config_files import parse_config_flags  # noqa: E402
from sbsd_jax.model import flops as flops_lib  # noqa: E402
from sbsd_jax.model.config import T5Config  # noqa: E402
from sbsd_jax.model.decoder_only.config import DecoderConfig  # noqa: E402
from sbsd_jax.model.flops import CHIP_PEAKS, ChipPeak, chip_for  # noqa: E402, F401 (re-export)
from sbsd_jax.settings import from_config  # noqa: E402
from sbsd_jax.settings.spec import ConfigError, RunSpec  # noqa: E402
from sbsd_jax.train import mesh as mesh_lib  # noqa: E402
from sbsd_jax.train import step as step_lib  # noqa: E402

GIB = 1024**3

# HBM per chip in GiB, by the device_kind libtpu reports (and the topology name's prefix).
HBM_GIB: dict[str, float] = {
    "v4": 32.0,
    "v5e": 16.0,
    "v5 lite": 16.0,
    "v5p": 95.0,
    "v5": 95.0,
    "v6e": 32.0,
    "v6 lite": 32.0,
}


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-device bytes of one compiled executable (XLA's memory analysis)."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    generated_code_bytes: int
    hbm_bytes: float | None

    @property
    def total_bytes(self) -> int:
        """What must be resident at the peak: inputs, outputs not aliased to inputs, temps."""
        return (
            self.argument_bytes
            + self.output_bytes
            - self.alias_bytes
            + self.temp_bytes
            + self.generated_code_bytes
        )

    @property
    def fits(self) -> bool | None:
        return None if self.hbm_bytes is None else self.total_bytes <= self.hbm_bytes

    def table(self) -> str:
        rows = [
            ("arguments (state + batch)", self.argument_bytes),
            ("outputs", self.output_bytes),
            ("  of which aliased to donated inputs", self.alias_bytes),
            ("temporaries (activations, grads)", self.temp_bytes),
            ("generated code", self.generated_code_bytes),
            ("total per device", self.total_bytes),
        ]
        lines = [f"{name:<38} {value / GIB:9.2f} GiB" for name, value in rows]
        if self.hbm_bytes is not None:
            verdict = "fits" if self.fits else "DOES NOT FIT"
            lines.append(
                f"{'HBM per chip':<38} {self.hbm_bytes / GIB:9.2f} GiB  -> {verdict} "
                f"({100 * self.total_bytes / self.hbm_bytes:.0f}% used)"
            )
        return "\n".join(lines)


def hbm_bytes_for(device_kind: str, topology_name: str = "") -> float | None:
    """HBM of one chip from libtpu's device_kind ('TPU v4', 'TPU v5 lite', ...) or the name."""
    kind = device_kind.lower().removeprefix("tpu").strip()
    if kind in HBM_GIB:
        return HBM_GIB[kind] * GIB
    prefix = topology_name.split(":")[0].lower()
    return HBM_GIB[prefix] * GIB if prefix in HBM_GIB else None


# Generations whose two TensorCores per chip act as one device ("megacore").
MEGACORE_GENERATIONS: tuple[str, ...] = ("v4", "v5p")


class TopologyError(ValueError):
    """A --topology that libtpu cannot describe (or no libtpu); the message says which."""


def topology_devices(
    topology: str,
    num_slices: int = 1,
    chips_per_host_bounds: tuple[int, int, int] | None = None,
) -> list[jax.Device]:
    """The devices (one per chip) of a TPU topology such as 'v4:2x2x4' or 'v5e:2x4'.

    Needs libtpu. Hosts hold 2x2x1 chips by default, except v5e/v6e '2x4', which is the
    single-host 8-chip machine (v5litepod-8 / v6e-8).
    """
    from jax.experimental import topologies

    generation, _, shape = topology.lower().partition(":")
    if chips_per_host_bounds is None:
        single_host_8 = generation in ("v5e", "v6e") and shape == "2x4"
        chips_per_host_bounds = (2, 4, 1) if single_host_8 else (2, 2, 1)
    kwargs = {
        "chip_config_name": "megacore" if generation in MEGACORE_GENERATIONS else "default",
        "chips_per_host_bounds": chips_per_host_bounds,
        "num_slices": num_slices,
    }
    try:
        description = topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs)
    except Exception as error:  # libtpu missing or an unknown topology name
        raise TopologyError(
            f"cannot describe TPU topology {topology!r} ({error}); is libtpu installed? "
            f'pip install "jax[tpu]=={jax.__version__}"'
        ) from error
    return list(description.devices)


def abstract_batch(
    method: str, batching: BatchingSpec, sharding: jax.sharding.Sharding
) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes of one global training batch at the full lengths: the batch contract of
    data/features.py (step_by_step puts a predict and an explain sequence per example in the
    batch: 2 * batch_size rows; the other methods one). Decoder-only rows (row_length > 0):
    the causal-LM contract, rows of row_length slots."""
    if batching.row_length:
        shapes = causal_batch_shapes(method, batching.batch_size, batching.row_length)
    else:
        shapes = batch_shapes(
            method, batching.batch_size, batching.max_input_length, batching.max_target_length
        )
    return {
        key: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
        for key, (shape, dtype) in shapes.items()
    }


def compile_train_step(
    spec: RunSpec, devices: list[jax.Device]
) -> tuple[jax.stages.Compiled, step_lib.TrainProgram]:
    """Lowers and compiles the real train step for `devices` without allocating anything
    (ConfigError when the mesh does not fit them)."""
    spec.check_devices(len(devices))
    mesh = mesh_lib.make_mesh(spec.mesh, devices)
    program = step_lib.build_train_program(
        spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules, platform=devices[0].platform
    )
    batch = abstract_batch(spec.step.method, spec.batching, program.batch_sharding)
    frozen = ()  # LoRA: the frozen (quantised) base, a separate non-donated argument
    if program.frozen is not None:
        frozen = (step_lib.with_shardings(program.frozen.abstract, program.frozen.shardings),)
    lowered = program.train_step.lower(program.abstract_state_with_shardings, batch, *frozen)
    return lowered.compile(), program


def memory_report(compiled: jax.stages.Compiled, hbm_bytes: float | None) -> MemoryReport:
    stats = compiled.memory_analysis()
    return MemoryReport(
        argument_bytes=int(stats.argument_size_in_bytes),
        output_bytes=int(stats.output_size_in_bytes),
        alias_bytes=int(stats.alias_size_in_bytes),
        temp_bytes=int(stats.temp_size_in_bytes),
        generated_code_bytes=int(stats.generated_code_size_in_bytes),
        hbm_bytes=hbm_bytes,
    )


@dataclasses.dataclass(frozen=True)
class StepCost:
    """What one train step costs per chip, on paper: the model's FLOPs by formula, XLA's
    count of the compiled (per-device) program, and the roofline bound from the chip's peaks.
    """

    model_flops: float  # the whole step, all chips, by formula (sbsd_jax.model.flops)
    xla_flops: float  # per device, XLA cost analysis (remat recomputation included)
    xla_bytes: float  # per device, bytes XLA counts as accessed
    chips: int
    examples_per_step: int
    peak: ChipPeak

    @property
    def xla_undercounts(self) -> bool:
        """XLA's cost analysis counts a while-loop body once, so with scan_layers=True (and
        gradient accumulation) its FLOPs and bytes are those of one iteration."""
        return self.xla_flops < 0.9 * self.model_flops / self.chips

    @property
    def compute_seconds(self) -> float:
        """At peak, for the larger of XLA's count and the formula's share of one chip."""
        flops = max(self.xla_flops, self.model_flops / self.chips)
        return flops / (self.peak.bf16_tflops * 1e12)

    @property
    def memory_seconds(self) -> float:
        return self.xla_bytes / (self.peak.hbm_gb_per_s * 1e9)

    @property
    def bound_seconds(self) -> float:
        """Best-case step time: neither the chip's FLOP/s nor its HBM can go faster."""
        return max(self.compute_seconds, self.memory_seconds)

    @property
    def examples_per_second_per_chip(self) -> float:
        return self.examples_per_step / self.chips / self.bound_seconds

    def mfu(self, step_seconds: float) -> float:
        """Model FLOPs utilisation of a step that takes step_seconds."""
        return flops_lib.mfu(
            self.model_flops, step_seconds, self.chips, self.peak.bf16_tflops * 1e12
        )

    def table(self, measured_step_seconds: float | None = None) -> str:
        per_chip = self.model_flops / self.chips
        bound = "compute" if self.compute_seconds >= self.memory_seconds else "HBM bandwidth"
        lines = [
            f"{'model FLOPs per step (formula)':<38} {self.model_flops / 1e12:9.2f} TFLOP "
            f"({per_chip / 1e12:.2f} per chip)",
            f"{'XLA cost analysis, per chip':<38} {self.xla_flops / 1e12:9.2f} TFLOP, "
            f"{self.xla_bytes / 1e9:.1f} GB accessed",
            f"{'chip peak (bf16 dense, HBM)':<38} {self.peak.bf16_tflops:9.0f} TFLOP/s, "
            f"{self.peak.hbm_gb_per_s:.0f} GB/s",
            f"{'roofline step time':<38} {1e3 * self.bound_seconds:9.1f} ms ({bound} bound: "
            f"compute {1e3 * self.compute_seconds:.1f} ms, memory {1e3 * self.memory_seconds:.1f}"
            " ms)",
            f"{'best case':<38} {self.examples_per_second_per_chip:9.1f} examples/s per chip, "
            f"MFU at most {100 * self.mfu(self.bound_seconds):.0f}%",
        ]
        if self.xla_undercounts:
            lines.append(
                "  (XLA counts a loop body, e.g. scanned layers, once: its FLOPs and bytes are "
                "one iteration's; the compute bound uses the formula, the memory bound is low)"
            )
        if measured_step_seconds:
            lines.append(
                f"{'measured':<38} {1e3 * measured_step_seconds:9.1f} ms per step: MFU "
                f"{100 * self.mfu(measured_step_seconds):.1f}%, "
                f"{self.examples_per_step / self.chips / measured_step_seconds:.1f} examples/s "
                "per chip"
            )
        return "\n".join(lines)


def step_cost(
    compiled: jax.stages.Compiled,
    spec: RunSpec,
    model_config: T5Config | DecoderConfig,
    chips: int,
    peak: ChipPeak,
) -> StepCost:
    """The compiled step's cost next to the formula for the run's full-length batch."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per program
        analysis = analysis[0]
    shape = TrainStepShape.of_run(spec)
    return StepCost(
        model_flops=float(shape.model_flops(model_config)),
        xla_flops=float(analysis.get("flops", 0.0)),
        xla_bytes=float(analysis.get("bytes accessed", 0.0)),
        chips=chips,
        examples_per_step=shape.batch_size,
        peak=peak,
    )


_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_TOPOLOGY = flags.DEFINE_string("topology", "v5e:2x2", "TPU topology, e.g. v4:2x2x4, v5e:2x4.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "Slices joined over DCN (multi-slice).")
_HOST_BOUNDS = flags.DEFINE_list(
    "chips_per_host_bounds", [], "Chips per host as x,y,z (default 2,2,1; v5e/v6e:2x4 2,4,1)."
)


_CHIP = flags.DEFINE_enum(
    "chip", None, list(CHIP_PEAKS), "Peaks for the roofline (default: the topology's chip)."
)
_MEASURED = flags.DEFINE_float(
    "measured_step_seconds", None, "A real step time (GPU run, TPU log): prints measured MFU."
)


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config=configs/<experiment>.py is required")
    try:  # every group, once, before libtpu starts; the mesh once the devices are known
        spec = from_config.run_spec(config, check_data=False)
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    bounds = _HOST_BOUNDS.value
    try:
        devices = topology_devices(
            _TOPOLOGY.value,
            _NUM_SLICES.value,
            tuple(int(x) for x in bounds) if bounds else None,  # type: ignore[arg-type]
        )
    except TopologyError as error:
        print(f"sbsd_jax.aot: --topology={_TOPOLOGY.value}: {error}", file=sys.stderr)
        sys.exit(2)
    start = time.perf_counter()
    try:
        compiled, program = compile_train_step(spec, devices)
    except ConfigError as error:
        print(error, file=sys.stderr)
        sys.exit(2)
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        # XLA's TPU compiler refuses a program whose temporaries alone exceed HBM.
        print(
            f"topology {_TOPOLOGY.value}: {spec.model.name} DOES NOT FIT with mesh "
            f"{config.mesh.to_dict()}, remat {spec.model.remat_policy}:\n  {error}"
        )
        sys.exit(1)
    seconds = time.perf_counter() - start
    report = memory_report(compiled, hbm_bytes_for(devices[0].device_kind, _TOPOLOGY.value))
    mesh = dict(program.mesh.shape)
    params = sum(x.size for x in jax.tree.leaves(program.abstract_state.params))
    if program.frozen is not None:  # report the whole model; the adapters separately
        adapters = params
        params += sum(x.size for x in jax.tree.leaves(program.frozen.abstract))
        print(f"LoRA: {adapters / 1e6:.2f}M trained adapter params, base {spec.model.lora}")
    print(
        f"topology {_TOPOLOGY.value} x{_NUM_SLICES.value}: {len(devices)} x "
        f"{devices[0].device_kind}; mesh {mesh}"
    )
    print(
        f"model {spec.model.name} ({params / 1e9:.2f}B params, {program.model_config.dtype} "
        f"compute, remat {program.model_config.remat_policy}, scan {spec.model.scan_layers}); "
        f"optimizer {spec.optimizer.name}; method {spec.step.method}; batch "
        f"{spec.batching.batch_size} in {spec.step.grad_accum_steps} micro-batch(es); input "
        f"{spec.batching.max_input_length}, target {spec.batching.max_target_length}"
        + (f", decoder-only rows {spec.batching.row_length}" if spec.batching.row_length else "")
    )
    print(f"compiled in {seconds:.1f} s")
    print(report.table())
    chip = _CHIP.value or chip_for(devices[0].device_kind, _TOPOLOGY.value)
    if chip is not None:
        cost = step_cost(compiled, spec, program.model_config, len(devices), CHIP_PEAKS[chip])
        print(f"step cost on {chip} (peaks: published figures):")
        print(cost.table(_MEASURED.value))
    if report.fits is False:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=functools.partial(parse_config_flags, program="sbsd_jax.aot"))
