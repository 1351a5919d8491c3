"""Checks a training config before anything is built, and says what to change.

Every problem found is listed in one ConfigError (a ValueError), each line naming the field,
its value and the fix, e.g.
  config.batch_size=60: not divisible by the data-parallel size data*fsdp = 8; use a multiple of 8
so a run fails in its first second instead of after compiling for minutes. Part of the config
boundary (with from_config.py): the entry points call it, nothing below them reads a config.
The checks that need the devices run on the RunSpec (spec.RunSpec.check_devices) and share
their code with `validate(config, num_devices)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import ml_collections

from sbsd_jax.data.examples import KNOWN_DATASETS, SOURCE_KINDS
from sbsd_jax.data.features import DECODER_TEMPLATES as TEMPLATES
from sbsd_jax.data.features import METHOD_TASKS
from sbsd_jax.model.config import HUB_CHECKPOINTS, REMAT_POLICIES
from sbsd_jax.model.hf_checkpoint import local_checkpoint_problem
from sbsd_jax.model.sharding import MESH_AXES
from sbsd_jax.model.spec import all_model_names, family_of
from sbsd_jax.runtime.compute_dtype import CPU_DTYPE_ENV, CPU_DTYPES
from sbsd_jax.runtime.distributed import ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID
from sbsd_jax.runtime.run_storage import is_url, local_folder_problem
from sbsd_jax.settings.spec import (
    EXPORT_WHICH,
    LR_SCHEDULES,
    OPTIMIZERS,
    RNG_IMPLS,
    ConfigError,
    MeshShapeError,
    MeshSpec,
    batch_split_problems,
)

__all__ = ["BYTE_VOCABULARY_SIZE", "ConfigError", "model_overrides", "validate"]

METHODS: tuple[str, ...] = tuple(METHOD_TASKS)
LABEL_TYPES: tuple[str, ...] = ("gt", "llm")
COMPUTE_DTYPES: tuple[str, ...] = ("auto", "bfloat16", "float32", "float16")
PARAM_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
EVAL_SPLITS: tuple[str, ...] = ("train", "valid", "test")
# seqio.ByteVocabulary: pad, EOS, UNK, then the 256 byte values (checked in the tests).
BYTE_VOCABULARY_SIZE = 259
_DATA_DIR_LAYOUTS = {
    "paper": "the paper authors' datasets/ folder ({data_dir}/{dataset}/{dataset}_train.json)",
    "jsonl": "the folder holding train.jsonl / valid.jsonl / test.jsonl",
}


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, object]:
    """config.model_overrides as config keyword arguments, unset (None) fields dropped."""
    overrides = config.get("model_overrides") or {}
    if isinstance(overrides, ml_collections.ConfigDict):
        overrides = overrides.to_dict()
    return {name: value for name, value in dict(overrides).items() if value is not None}


def _environment_problems() -> list[str]:
    """Environment variables the run reads later, checked now (one line each)."""
    chosen = os.environ.get(CPU_DTYPE_ENV)
    if chosen and chosen not in CPU_DTYPES:
        return [
            f"environment variable {CPU_DTYPE_ENV}={chosen!r}: choose one of "
            f"{', '.join(CPU_DTYPES)} (or unset it)"
        ]
    return []


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
    elif config.export_hf_dir and (problem := local_folder_problem(config.export_hf_dir)):
        problems.append(f"config.export_hf_dir={config.export_hf_dir!r}: {problem}")
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
    elif spec == "word":
        return [
            "config.vocabulary='word' is trained by the demo (python -m sbsd_jax.experiments.demo)"
            "; to train one student, pass --config.vocabulary=<demo workdir>/data/vocabulary.model"
        ]
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


# Optional fields (configs built before them lack them) and the values they accept.
_RANGES: tuple[tuple[str, float, float, bool], ...] = (
    # field, low, high, whether high itself is allowed
    ("eval_max_examples", 0, float("inf"), True),
    ("end_learning_rate_fraction", 0.0, 1.0, True),
    ("adam_b1", 0.0, 1.0, False),
    ("adam_b2", 0.0, 1.0, False),
)


def _range_problems(config: ml_collections.ConfigDict) -> list[str]:
    problems = []
    for field, low, high, high_allowed in _RANGES:
        value = config.get(field)
        if value is None:
            continue
        inside = low <= value <= high if high_allowed else low <= value < high
        if not inside and high == float("inf"):
            problems.append(f"config.{field}={value!r}: must be >= {low:g}")
        elif not inside:
            bracket = "]" if high_allowed else ")"
            problems.append(f"config.{field}={value!r}: must be in [{low:g}, {high:g}{bracket}")
    eps = config.get("adam_eps")
    if eps is not None and eps <= 0:
        problems.append(f"config.adam_eps={eps!r}: must be > 0")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mesh_field_problems(mesh: Mapping[str, object]) -> list[str]:
    """The mesh sizes themselves (whole numbers, -1 = fill at most once), without devices."""
    problems = []
    sizes = {name: mesh.get(name, 1) for name in (*MESH_AXES, "dcn_data")}
    for name, size in sizes.items():
        if not _is_int(size):
            problems.append(f"config.mesh.{name}={size!r}: must be a whole number")
        elif size == 0 or size < -1 or (name == "dcn_data" and size < 1):
            allowed = ">= 1" if name == "dcn_data" else ">= 1, or -1 to fill the remaining devices"
            problems.append(f"config.mesh.{name}={size}: must be {allowed}")
    fill = [name for name in MESH_AXES if sizes[name] == -1]
    if len(fill) > 1:
        problems.append(
            "only one of config.mesh.data/fsdp/tensor may be -1 (fill); got "
            + ", ".join(f"{name}={sizes[name]}" for name in MESH_AXES)
        )
    return problems


def _distributed_problems(dist: Mapping[str, object]) -> list[str]:
    """config.distributed and the SBSD_* variables, as maybe_initialize_distributed reads them."""
    problems = []
    mode = dist.get("mode", "auto") or "auto"
    if mode not in ("auto", "on", "off"):
        problems.append(f"config.distributed.mode={mode!r}: unknown; choose one of auto, on, off")
    for name, minimum in (("num_processes", 0), ("process_id", -1)):
        value = dist.get(name, minimum)
        if not _is_int(value) or value < minimum:
            problems.append(
                f"config.distributed.{name}={value!r}: must be a whole number >= {minimum}"
            )
    env = {}
    for variable in (ENV_NUM_PROCESSES, ENV_PROCESS_ID):
        text = os.environ.get(variable, "")
        try:
            env[variable] = int(text) if text else None
        except ValueError:
            problems.append(f"environment variable {variable}={text!r}: must be a whole number")
    coordinator = dist.get("coordinator_address") or os.environ.get(ENV_COORDINATOR, "")
    if coordinator and mode != "off" and not problems:
        num_processes = dist.get("num_processes") or env[ENV_NUM_PROCESSES] or 0
        process_id = dist.get("process_id", -1)
        if process_id < 0 and env[ENV_PROCESS_ID] is not None:
            process_id = env[ENV_PROCESS_ID]
        if num_processes < 1 or process_id < 0:
            problems.append(
                f"a coordinator address ({coordinator}) needs the number of processes and this "
                f"process's id: set config.distributed.num_processes/process_id or "
                f"{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}"
            )
        elif process_id >= num_processes:
            problems.append(
                f"process id {process_id} is not below the number of processes {num_processes} "
                f"(config.distributed.process_id / {ENV_PROCESS_ID})"
            )
    return problems


_CHOICES: tuple[tuple[str, Sequence[str]], ...] = (
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
)
_POSITIVE: tuple[str, ...] = (
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
)


def _model_problems(config: ml_collections.ConfigDict, check_data: bool) -> list[str]:
    """The model name, its overrides, LoRA, decoder-only rows and (check_data) a vocabulary
    that fits its embedding."""
    names = all_model_names()
    if config.model not in names:
        return [f"config.model={config.model!r}: unknown model; choose one of {', '.join(names)}"]
    family = family_of(config.model)
    try:
        model_config = family.make_config(config.model, **model_overrides(config))
    except (ValueError, TypeError) as error:
        return [f"config.model_overrides: {error}"]
    problems = _lora_problems(config) + _init_checkpoint_problems(config)
    if family.causal:
        problems += _causal_problems(config)
        if check_data:
            problems += _hf_tokenizer_problems(config, model_config.vocab_size)
        return problems
    return problems + (_vocabulary_problems(config, model_config.vocab_size) if check_data else [])


def _init_checkpoint_problems(config: ml_collections.ConfigDict) -> list[str]:
    """A local init_checkpoint that cannot load (hub ids are fetched when the run starts)."""
    checkpoint = str(config.get("init_checkpoint") or "")
    problem = local_checkpoint_problem(checkpoint) if checkpoint else None
    return [f"config.init_checkpoint={checkpoint!r}: {problem}"] if problem else []


def _lora_problems(config: ml_collections.ConfigDict) -> list[str]:
    """config.lora: a LoraSpec that can be built (one line naming the field)."""
    from sbsd_jax.settings.from_config import lora_spec

    try:
        lora_spec(config)
    except (ValueError, TypeError) as error:
        return [f"config.lora: {str(error).replace('LoraSpec.', 'config.lora.')}"]
    return []


def _causal_problems(config: ml_collections.ConfigDict) -> list[str]:
    """A decoder-only student's template and row length."""
    problems = []
    if config.decoder_template not in TEMPLATES:
        problems.append(
            f"config.decoder_template={config.decoder_template!r}: unknown; choose one of "
            f"{', '.join(TEMPLATES)}"
        )
    length = config.decoder_row_length
    if not _is_int(length) or length < 0:
        problems.append(f"config.decoder_row_length={length!r}: must be >= 0 (0 = input + target)")
    elif 0 < length < 3:
        problems.append(
            f"config.decoder_row_length={length}: a row needs a prompt, a target token and EOS"
        )
    return problems


def _hf_tokenizer_problems(config: ml_collections.ConfigDict, model_vocab_size: int) -> list[str]:
    """A decoder-only student's vocabulary: a seqio one (as for T5), a folder holding a Hugging
    Face tokenizer, or the hub id of config.init_checkpoint (fetched when the run starts)."""
    from sbsd_jax.settings.from_config import is_seqio_vocabulary

    spec = str(config.vocabulary or "")
    if is_seqio_vocabulary(spec):
        return _vocabulary_problems(config, model_vocab_size)
    if spec and spec == str(config.init_checkpoint or "") and not os.path.exists(spec):
        return []
    if not os.path.isdir(spec) or not any(
        os.path.isfile(os.path.join(spec, name))
        for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        return [
            f"config.vocabulary={spec!r}: for a decoder-only student use 'byte', a SentencePiece "
            "model, a folder with a Hugging Face tokenizer, or the hub id of config.init_checkpoint"
        ]
    return []


def _number_problems(config: ml_collections.ConfigDict) -> list[str]:
    """alpha, sizes, counts, rates and the optimizer's constants."""
    problems = []
    alpha = config.alpha
    if not isinstance(alpha, int | float) or not 0.0 <= float(alpha) <= 1.0:
        problems.append(f"config.alpha={alpha!r}: must be in [0, 1] (weight of the label loss)")
    problems += _positive(config, _POSITIVE)
    for field in ("warmup_steps", "weight_decay", "grad_clip_norm"):
        value = config.get(field)
        if not isinstance(value, int | float) or value < 0:
            problems.append(f"config.{field}={value!r}: must be >= 0")
    problems += _range_problems(config)
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
    return problems


def _device_problems(
    config: ml_collections.ConfigDict, num_devices: int | None, num_processes: int
) -> list[str]:
    """Mesh field values always; mesh sizes and batch splits once the devices are known."""
    mesh = config.get("mesh") or {}
    problems = _mesh_field_problems(mesh)
    if num_devices is None or problems:
        return problems
    spec = MeshSpec(
        data=mesh.get("data", 1),
        fsdp=mesh.get("fsdp", 1),
        tensor=mesh.get("tensor", 1),
        dcn_data=mesh.get("dcn_data", 1),
        rules=(),
    )
    try:
        shape = spec.shape(num_devices)
    except MeshShapeError as error:
        return [str(error)]
    return batch_split_problems(
        shape,
        batch_size=config.batch_size,
        grad_accum_steps=config.grad_accum_steps,
        eval_batch_size=config.eval_batch_size,
        num_devices=num_devices,
        num_processes=num_processes,
    )


def validate(
    config: ml_collections.ConfigDict,
    num_devices: int | None,
    num_processes: int = 1,
    *,
    check_data: bool = True,
) -> None:
    """Raises ConfigError listing everything wrong with `config` for `num_devices` devices.

    num_devices=None: every check that needs no devices (all config groups, mesh field values
    included), for the start of a run, before distributed initialisation or any other side
    effect; call again with the device count for the mesh-size and batch-split checks.
    check_data: also check data_dir, the vocabulary and the evaluation/export settings (off for
    the ahead-of-time compile, which reads no data)."""
    problems = [p for field, allowed in _CHOICES if (p := _one_of(config, field, allowed))]
    problems += _model_problems(config, check_data)
    problems += _distributed_problems(config.get("distributed") or {})
    problems += _number_problems(config)
    if check_data:
        problems += _data_problems(config)
    problems += _rules_problems(config.get("logical_axis_rules"))
    problems += _device_problems(config, num_devices, num_processes)
    problems += _environment_problems()
    if problems:
        raise ConfigError(problems)
