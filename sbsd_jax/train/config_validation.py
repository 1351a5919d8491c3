"""Checks a training config before anything is built, and says what to change.

Every problem found is listed in one ConfigError (a ValueError), each line naming the field,
its value and the fix, e.g.
  config.batch_size=60: not divisible by the data-parallel size data*fsdp = 8; use a multiple of 8
so a run fails in its first second instead of after compiling for minutes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections

from sbsd_jax.data.examples import KNOWN_DATASETS, SOURCE_KINDS
from sbsd_jax.model.config import HUB_CHECKPOINTS, MODEL_NAMES, REMAT_POLICIES, get_model_config
from sbsd_jax.train.loss import METHODS
from sbsd_jax.train.mesh import MeshShapeError, resolve_mesh_shape
from sbsd_jax.train.optimizer import LR_SCHEDULES, OPTIMIZERS
from sbsd_jax.train.partitioning import MESH_AXES
from sbsd_jax.train.run_storage import is_url
from sbsd_jax.train.step import model_overrides

LABEL_TYPES: tuple[str, ...] = ("gt", "llm")
COMPUTE_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float32", "float16")
PARAM_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
EXPORT_WHICH: tuple[str, ...] = ("best", "final")
RNG_IMPLS: tuple[str, ...] = ("threefry2x32", "rbg", "unsafe_rbg")
EVAL_SPLITS: tuple[str, ...] = ("train", "valid", "test")
# seqio.ByteVocabulary: pad, EOS, UNK, then the 256 byte values (checked in the tests).
BYTE_VOCABULARY_SIZE = 259
_DATA_DIR_LAYOUTS = {
    "paper": "the paper authors' datasets/ folder ({data_dir}/{dataset}/{dataset}_train.json)",
    "jsonl": "the folder holding train.jsonl / valid.jsonl / test.jsonl",
}


class ConfigError(ValueError):
    """A config that cannot work; the message lists each offending field and the fix."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__(
            "invalid config:\n" + "\n".join(f"  - {problem}" for problem in self.problems)
        )


def _one_of(config: ml_collections.ConfigDict, field: str, allowed: Sequence[str]) -> str | None:
    value = config.get(field)
    if value not in allowed:
        return f"config.{field}={value!r}: unknown; choose one of {', '.join(allowed)}"
    return None


def _positive(config: ml_collections.ConfigDict, fields: Sequence[str]) -> list[str]:
    problems = []
    for field in fields:
        value = config.get(field)
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            problems.append(f"config.{field}={value!r}: must be a positive number")
    return problems


def _data_problems(config: ml_collections.ConfigDict) -> list[str]:
    """data_dir where the source reads files, eval_splits, and what best-export needs."""
    problems = []
    source, data_dir = config.data_source, str(config.get("data_dir") or "")
    if source in _DATA_DIR_LAYOUTS:
        if not data_dir:
            problems.append(
                f"config.data_dir is empty: data_source {source!r} needs "
                f"{_DATA_DIR_LAYOUTS[source]}; pass --config.data_dir=..."
            )
        elif not is_url(data_dir) and not os.path.isdir(data_dir):
            problems.append(
                f"config.data_dir={data_dir!r}: no such directory (data_source {source!r} "
                f"needs {_DATA_DIR_LAYOUTS[source]})"
            )
    names = tuple(config.eval_splits or ())
    if any(name not in EVAL_SPLITS for name in names):
        problems.append(
            f"config.eval_splits={names!r}: must be a tuple of split names from "
            f'{", ".join(EVAL_SPLITS)}, e.g. --config.eval_splits=\'("valid", "test")\''
        )
    if config.export_hf_dir and is_url(str(config.export_hf_dir)):
        problems.append(
            f"config.export_hf_dir={config.export_hf_dir!r}: the Hugging Face export writes a "
            "local folder; export locally and copy it up (gsutil cp -r / gcloud storage cp -r)"
        )
    if config.export_hf_dir and config.export_which == "best":
        if "valid" not in names:
            problems.append(
                "config.export_which='best' ranks checkpoints by validation accuracy, but "
                f"config.eval_splits={tuple(names)!r} has no 'valid'; add it or export "
                "with --config.export_which=final"
            )
        elif not config.keep_best:
            problems.append(
                "config.export_which='best' needs config.keep_best=True (otherwise the best "
                "checkpoint may be deleted before the export); or use export_which=final"
            )
    return problems


def _vocabulary_problems(config: ml_collections.ConfigDict, model_vocab_size: int) -> list[str]:
    """The vocabulary exists and all its ids fit the model's embedding table (JAX would clamp
    out-of-range ids silently)."""
    spec = str(config.vocabulary or "")
    checkpoint = str(config.get("init_checkpoint") or "")
    if spec == "byte" and (
        checkpoint in HUB_CHECKPOINTS.values()
        or os.path.isfile(os.path.join(checkpoint, "spiece.model"))
    ):
        return [
            f"config.init_checkpoint={checkpoint!r} reads SentencePiece ids but "
            "config.vocabulary='byte'; pass --config.vocabulary=<its spiece.model> (T5 v1.0, "
            "v1.1 and FLAN-T5 share one)"
        ]
    if spec == "byte":
        size = BYTE_VOCABULARY_SIZE
    elif not spec or not os.path.isfile(spec):
        return [
            f"config.vocabulary={spec!r}: neither 'byte' nor an existing SentencePiece model "
            "file (e.g. the spiece.model of the T5 checkpoint you start from)"
        ]
    else:
        import sentencepiece

        try:
            size = sentencepiece.SentencePieceProcessor(model_file=spec).get_piece_size()
        except (OSError, RuntimeError) as error:
            return [f"config.vocabulary={spec!r}: not a SentencePiece model ({error})"]
    if size > model_vocab_size:
        return [
            f"config.vocabulary={spec!r} has {size} ids but the model's vocab_size is "
            f"{model_vocab_size}; use a larger --config.model_overrides.vocab_size"
        ]
    return []


def _rules_problems(rules: object) -> list[str]:
    if not rules:
        return []
    problems = []
    for rule in rules:  # type: ignore[union-attr]
        if not isinstance(rule, list | tuple) or len(rule) != 2 or not isinstance(rule[0], str):
            problems.append(
                f"config.logical_axis_rules entry {rule!r}: expected (logical_name, mesh_axes)"
            )
            continue
        axes = rule[1]
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        unknown = [name for name in names if name not in MESH_AXES]
        if unknown:
            problems.append(
                f"config.logical_axis_rules entry {tuple(rule)!r}: unknown mesh axes {unknown}; "
                f"mesh axes are {', '.join(MESH_AXES)}"
            )
    return problems


def validate(
    config: ml_collections.ConfigDict,
    num_devices: int,
    num_processes: int = 1,
    *,
    check_data: bool = True,
) -> None:
    """Raises ConfigError listing everything wrong with `config` for `num_devices` devices.

    check_data: also check data_dir, the vocabulary and the evaluation/export settings (off for
    the ahead-of-time compile, which reads no data)."""
    problems: list[str] = []

    for field, allowed in (
        ("method", METHODS),
        ("optimizer", OPTIMIZERS),
        ("lr_schedule", LR_SCHEDULES),
        ("dataset", KNOWN_DATASETS),
        ("data_source", SOURCE_KINDS),
        ("label_type", LABEL_TYPES),
        ("compute_dtype", COMPUTE_DTYPES),
        ("param_dtype", PARAM_DTYPES),
        ("remat_policy", REMAT_POLICIES),
        ("export_which", EXPORT_WHICH),
        ("rng_impl", RNG_IMPLS),
    ):
        problem = _one_of(config, field, allowed)
        if problem:
            problems.append(problem)

    if config.model not in MODEL_NAMES:
        problems.append(
            f"config.model={config.model!r}: unknown model; choose one of {', '.join(MODEL_NAMES)}"
        )
    else:
        try:
            model_config = get_model_config(config.model, **model_overrides(config))
        except (ValueError, TypeError) as error:
            problems.append(f"config.model_overrides: {error}")
        else:
            if check_data:
                problems += _vocabulary_problems(config, model_config.vocab_size)

    mode = config.get("distributed", {}).get("mode", "auto")
    if mode not in ("auto", "on", "off"):
        problems.append(f"config.distributed.mode={mode!r}: unknown; choose one of auto, on, off")

    alpha = config.alpha
    if not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        problems.append(f"config.alpha={alpha!r}: must be in [0, 1] (weight of the label loss)")

    problems += _positive(
        config,
        (
            "batch_size",
            "max_input_length",
            "max_target_length",
            "learning_rate",
            "num_train_steps",
            "grad_accum_steps",
            "eval_every",
            "eval_batch_size",
            "eval_max_decode_length",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
        ),
    )
    for field in ("warmup_steps", "weight_decay", "grad_clip_norm"):
        value = config.get(field)
        if not isinstance(value, int | float) or value < 0:
            problems.append(f"config.{field}={value!r}: must be >= 0")
    if (
        config.lr_schedule in ("linear", "linear_warmup_cosine")
        and isinstance(config.warmup_steps, int)
        and config.warmup_steps >= config.num_train_steps
    ):
        problems.append(
            f"config.warmup_steps={config.warmup_steps}: must be smaller than "
            f"config.num_train_steps={config.num_train_steps} for a decaying schedule"
        )
    if not 0.0 < float(config.train_fraction) <= 1.0:
        problems.append(f"config.train_fraction={config.train_fraction!r}: must be in (0, 1]")
    if check_data:
        problems += _data_problems(config)
    problems += _rules_problems(config.get("logical_axis_rules"))

    try:
        data, fsdp, tensor = resolve_mesh_shape(config.mesh, num_devices)
    except MeshShapeError as error:
        problems.append(str(error))
    else:
        total = data * fsdp * tensor
        if total < num_devices and num_processes > 1:
            problems.append(
                f"config.mesh uses {total} of {num_devices} devices; a multi-process run must use "
                f"all of them (set one mesh axis to -1)"
            )
        data_parallel = data * fsdp
        accum = config.grad_accum_steps
        batch = config.batch_size
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
        eval_batch = config.eval_batch_size
        if isinstance(eval_batch, int) and eval_batch > 0 and eval_batch % data_parallel:
            problems.append(
                f"config.eval_batch_size={eval_batch}: must be a multiple of the data-parallel "
                f"size data*fsdp = {data_parallel}"
            )

    if problems:
        raise ConfigError(problems)
