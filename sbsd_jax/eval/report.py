r"""Efficiency and reasoning reports for a student that is already trained.

    python -m sbsd_jax.eval.report --workdir=runs/cqa_sbs            # a run directory
    python -m sbsd_jax.eval.report --hf_dir=out/hf --inputs=data/test.jsonl \
        --vocabulary=out/hf/spiece.model                             # a Hugging Face export

A run directory: the best checkpoint (else the newest; `--step=N` picks one) is restored on
this machine's first device, the efficiency report decodes the label inputs of its test split
(`config.json` says where the data is), and the reasoning report reads the newest predictions
file of each split that holds decoded rationales (`--config.decode_rationales=True`). Files
go into the run directory, as at the end of `sbsd_jax.main`. An export: `--inputs` is a JSONL
file with an `input` field per line (a data file, or a run's predictions file); only the
efficiency report is written, into `--out_dir` (default: the export folder).

A run directory whose metrics.jsonl logs step times (`train_step_seconds`) also gets its
measured training MFU (mfu.json, sbsd_jax.eval.mfu), on this machine's devices and chip kind
unless `--train_chips=N` / `--train_chip=v5e` say what the run trained on.
"""

from __future__ import annotations

import json
import math
import re
import sys

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory written by sbsd_jax.main.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: best, else newest).")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "Hugging Face T5 folder (our export).")
_INPUTS = flags.DEFINE_string("inputs", None, "JSONL with an 'input' field (with --hf_dir).")
_VOCABULARY = flags.DEFINE_string(
    "vocabulary",
    None,
    "With --hf_dir: 'byte' or a SentencePiece model (default: its spiece.model).",
)
_PREFIX = flags.DEFINE_string("task_prefix", "predict: ", "With --hf_dir: the label task prefix.")
_MAX_INPUT = flags.DEFINE_integer("max_input_length", 1024, "With --hf_dir: input tokens.")
_MAX_DECODE = flags.DEFINE_integer("max_decode_length", 64, "With --hf_dir: output tokens.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "With --hf_dir: the throughput batch.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "With --hf_dir: where efficiency.json goes.")
_TRAIN_CHIPS = flags.DEFINE_integer(
    "train_chips", None, "With --workdir: devices the run trained on (default: its mesh here)."
)
_TRAIN_CHIP = flags.DEFINE_string(
    "train_chip", None, "With --workdir: chip it trained on, for MFU's peak (v4, v5e, h100...)."
)

EXIT_USAGE = 2


class ReportError(Exception):
    """A user mistake: the message says which file or flag."""


def _latest_predictions(workdir: str) -> dict[str, str]:
    """{split: newest predictions file} of a run directory."""
    from etils import epath

    newest: dict[str, tuple[int, str]] = {}
    folder = epath.Path(workdir) / "predictions"
    for path in folder.glob("*_step_*.jsonl") if folder.exists() else []:
        match = re.fullmatch(r"(.+)_step_(\d+)\.jsonl", path.name)
        if match and int(match[2]) >= newest.get(match[1], (-1, ""))[0]:
            newest[match[1]] = (int(match[2]), str(path))
    return {split: path for split, (_, path) in newest.items()}


def _run_config(workdir: str):
    import ml_collections
    from etils import epath

    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise ReportError(f"{path}: not found; --workdir must be a run directory of sbsd_jax.main")
    try:
        fields = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ReportError(f"{path}: invalid JSON ({error})") from error
    if not isinstance(fields, dict):
        raise ReportError(f"{path}: not a JSON object; was it written by sbsd_jax.main?")
    return ml_collections.ConfigDict(fields)


def _training_chips(mesh, devices: int) -> int:
    """Devices the run trained on: --train_chips, else its mesh (a settings.spec.MeshSpec)
    filled in with `devices`."""
    from sbsd_jax.settings.spec import MeshShapeError

    if _TRAIN_CHIPS.value is not None:
        if _TRAIN_CHIPS.value < 1:
            raise ReportError(f"--train_chips must be positive, got {_TRAIN_CHIPS.value}")
        return _TRAIN_CHIPS.value
    try:
        return math.prod(mesh.shape(devices))
    except MeshShapeError as error:
        raise ReportError(
            f"config.json's mesh on {devices} devices here: {error}; pass --train_chips=N"
        ) from error


def report_run(workdir: str, step: int | None) -> list[str]:
    config = _run_config(workdir)  # first: a wrong --workdir answers before JAX loads
    chip = _TRAIN_CHIP.value
    from sbsd_jax.model.flops import CHIP_PEAKS

    if chip is not None and chip not in CHIP_PEAKS:
        raise ReportError(f"--train_chip={chip}: not one of {', '.join(CHIP_PEAKS)}")
    import dataclasses

    import jax

    from sbsd_jax.data.sources import load_dataset_splits
    from sbsd_jax.data.vocabulary import make_vocabulary
    from sbsd_jax.eval.evaluator import text_codec
    from sbsd_jax.eval.predictions import read_predictions
    from sbsd_jax.eval.run_reports import for_training_run, training_mfu_lines
    from sbsd_jax.settings.from_config import to_run_spec
    from sbsd_jax.train import loop
    from sbsd_jax.train import mesh as mesh_lib
    from sbsd_jax.train.checkpointing import Checkpointer, CheckpointPolicy
    from sbsd_jax.train.step import build_train_program

    spec = to_run_spec(config)  # what the run trained with (its config.json, validated then)
    chips = _training_chips(spec.mesh, jax.device_count())
    one_device = dataclasses.replace(spec.mesh, data=1, fsdp=1, tensor=1)  # whatever trained it
    program = build_train_program(
        spec.model,
        spec.optimizer,
        spec.step,
        mesh_lib.make_mesh(one_device, jax.devices()[:1]),
        spec.mesh.rules,
    )
    paths = loop.RunPaths.of(workdir)
    with Checkpointer(paths.checkpoints, CheckpointPolicy()) as checkpointer:
        chosen = (
            step if step is not None else checkpointer.best_step() or checkpointer.latest_step()
        )
        if chosen is None or chosen not in checkpointer.all_steps():
            raise ReportError(f"{paths.checkpoints}: no checkpoint {'' if step is None else step}")
        params = checkpointer.restore(chosen, program.abstract_state_with_shardings).state.params
    splits = load_dataset_splits(spec.data.dataset).splits
    codec = text_codec(make_vocabulary(spec.data.vocabulary), spec.data.method)

    class _Records:  # what for_training_run reads of an EvalResult
        def __init__(self, path: str) -> None:
            self.records = read_predictions(path)

    results = {split: _Records(path) for split, path in _latest_predictions(workdir).items()}
    generate = loop._make_generate(program, params)
    lines = [f"{paths.workdir}: checkpoint step {chosen}"]
    settings = loop._eval_settings(spec, full=True)
    lines += for_training_run(
        settings,
        spec.evaluation.splits,
        program,
        params,
        splits,
        codec,
        results,
        generate,
        paths.workdir,
    )
    from sbsd_jax.eval.mfu import TrainStepShape

    return lines + training_mfu_lines(
        TrainStepShape.of_run(spec),
        program.model_config,
        paths.workdir,
        chips=chips,
        device=jax.devices()[0],
        chip=chip,
    )


def report_export(hf_dir: str, inputs: str, out_dir: str) -> list[str]:
    import numpy as np
    from flax import nnx

    from sbsd_jax.data.examples import Example
    from sbsd_jax.data.vocabulary import make_vocabulary
    from sbsd_jax.eval.evaluator import TextCodec
    from sbsd_jax.eval.run_reports import parameter_count, report_lines, write_efficiency
    from sbsd_jax.model.decode import compiled_decode_bytes, greedy_decode
    from sbsd_jax.model.hf_checkpoint import CheckpointError, load_hf_t5_model

    try:
        model, spm = load_hf_t5_model(hf_dir)
    except (CheckpointError, OSError) as error:
        raise ReportError(f"--hf_dir={hf_dir}: {error}") from error
    spec = _VOCABULARY.value or (str(spm) if spm else None)
    if spec is None:
        raise ReportError(f"--hf_dir={hf_dir} has no spiece.model: pass --vocabulary")
    try:
        vocabulary = make_vocabulary(spec)
        with open(inputs, encoding="utf-8") as handle:
            rows = [json.loads(line) for line in handle if line.strip()]
        examples = [Example(str(i), str(row["input"]), "") for i, row in enumerate(rows)]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ReportError(f"--inputs={inputs} / --vocabulary={spec}: {error!r}") from error
    codec = TextCodec(
        encode=vocabulary.encode,
        decode=lambda ids: vocabulary.decode(list(ids)),
        label_input=lambda example: _PREFIX.value + example.input,
    )
    graphdef, state = nnx.split(model)

    def generate(tokens: np.ndarray, length: int) -> np.ndarray:
        return np.asarray(greedy_decode(graphdef, tokens, state=state, max_decode_length=length))

    report = write_efficiency(
        out_dir,
        examples=examples,
        codec=codec,
        generate=generate,
        parameters=parameter_count(state),
        compute_dtype=str(model.config.dtype),
        max_input_length=_MAX_INPUT.value,
        max_decode_length=_MAX_DECODE.value,
        batch_size=_BATCH.value,
        compiled_bytes=lambda tokens: compiled_decode_bytes(
            graphdef, state, tokens, max_decode_length=_MAX_DECODE.value
        ),
    )
    return report_lines(report, [], out_dir)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if bool(_WORKDIR.value) == bool(_HF_DIR.value):
        raise app.UsageError("give exactly one of --workdir=RUN_DIR or --hf_dir=EXPORT_DIR")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore step at INFO
    from sbsd_jax.runtime.xla_flags import apply_default_xla_flags

    apply_default_xla_flags()  # as sbsd_jax.main: the same compiled decode, the same memory
    try:
        if _WORKDIR.value:
            lines = report_run(_WORKDIR.value, _STEP.value)
        else:
            if not _INPUTS.value:
                raise ReportError("--hf_dir needs --inputs=FILE.jsonl (an 'input' field a line)")
            lines = report_export(_HF_DIR.value, _INPUTS.value, _OUT_DIR.value or _HF_DIR.value)
    except ReportError as error:
        print(f"sbsd_jax.eval.report: {error}", file=sys.stderr)
        return EXIT_USAGE
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    app.run(main)
