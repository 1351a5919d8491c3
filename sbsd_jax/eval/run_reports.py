"""The reports a finished run writes beside its metrics: efficiency and reasoning.

Called at the end of `sbsd_jax.main` (sbsd_jax.train.loop) and by `python -m sbsd_jax.eval.report`
on an existing run directory or Hugging Face export. Files:
  efficiency.json                  size, latency at batch 1, throughput, inference memory
  reasoning.json                   per split with decoded rationales: lengths, agreement, math
  reasoning_<split>.md             teacher and student rationales side by side for a sample
  mfu.json                         measured MFU of training, from metrics.jsonl's step times
Returns the lines the run summary prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence

import jax
import numpy as np
from etils import epath

from sbsd_jax.data.examples import Example
from sbsd_jax.eval import efficiency, mfu, reasoning
from sbsd_jax.eval.evaluator import EvalSettings, GenerateFn, TextCodec, encode_inputs
from sbsd_jax.eval.predictions import PredictionRecord

REASONING_FILE = "reasoning.json"


def reasoning_markdown_path(workdir: str | os.PathLike[str], split: str) -> epath.Path:
    return epath.Path(workdir) / f"reasoning_{split}.md"


def efficiency_split(eval_splits: Sequence[str]) -> str | None:
    """The split whose inputs are timed: test when it is evaluated, else the first evaluated
    one; None when the run evaluates nothing (and so decodes nothing)."""
    if "test" in eval_splits:
        return "test"
    return eval_splits[0] if eval_splits else None


def smallest_batch(batch_sharding: object) -> int:
    """Rows the mesh splits a batch into (data x fsdp): the smallest batch it can decode."""
    mesh, spec = batch_sharding.mesh, batch_sharding.spec
    axes = spec[0] if spec else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    size = 1
    for axis in axes:
        size *= mesh.shape[axis]
    return size


def write_efficiency(
    workdir: str | os.PathLike[str],
    *,
    examples: Sequence[Example],
    codec: TextCodec,
    generate: GenerateFn,
    parameters: int,
    compute_dtype: str,
    max_input_length: int,
    max_decode_length: int,
    batch_size: int,
    latency_batch_size: int = 1,
    compiled_bytes: Callable[[np.ndarray], int | None] | None = None,
    is_primary: bool = True,
) -> efficiency.EfficiencyReport:
    """Measures on `examples`' label-task inputs and writes efficiency.json (primary process;
    every process must call this: decoding is collective)."""
    rows = encode_inputs([codec.label_input(e) for e in examples], codec.encode, max_input_length)
    report = efficiency.measure(
        generate,
        rows,
        parameters=parameters,
        compute_dtype=compute_dtype,
        max_input_length=max_input_length,
        max_decode_length=max_decode_length,
        batch_size=batch_size,
        latency_batch_size=latency_batch_size,
        compiled_bytes=compiled_bytes,
    )
    if is_primary:
        efficiency.write_report(workdir, report)
    return report


def write_reasoning(
    workdir: str | os.PathLike[str],
    dataset: str,
    records_by_split: Mapping[str, Sequence[PredictionRecord]],
    splits: Mapping[str, Sequence[Example]],
    *,
    sample: int = 20,
) -> list[reasoning.ReasoningReport]:
    """reasoning.json and one side-by-side markdown per split whose records carry decoded
    rationales; nothing (and []) when none do."""
    reports = []
    for split, records in records_by_split.items():
        if not any(r.rationale is not None for r in records):
            continue
        teacher = {e.id: e.rationale for e in splits.get(split, ())}
        reports.append(reasoning.analyse(dataset, split, records, teacher))
        markdown = reasoning.side_by_side_markdown(dataset, split, records, teacher, sample=sample)
        reasoning_markdown_path(workdir, split).write_text(markdown, encoding="utf-8")
    if reports:
        payload = {r.split: dataclasses.asdict(r) for r in reports}
        (epath.Path(workdir) / REASONING_FILE).write_text(
            json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
    return reports


def parameter_count(params: object) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def report_lines(
    efficiency_report: efficiency.EfficiencyReport | None,
    reasoning_reports: Sequence[reasoning.ReasoningReport],
    workdir: str,
) -> list[str]:
    lines = []
    if efficiency_report is not None:
        lines += efficiency_report.summary_lines()
        lines.append(f"  efficiency:  {epath.Path(workdir) / efficiency.EFFICIENCY_FILE}")
    for report in reasoning_reports:
        lines += report.summary_lines()
        lines.append(f"  side by side: {reasoning_markdown_path(workdir, report.split)}")
    return lines


def for_training_run(
    settings: EvalSettings,
    split_names: Sequence[str],
    program: object,
    params: object,
    splits: Mapping[str, Sequence[Example]],
    codec: TextCodec,
    results: Mapping[str, object],
    generate: GenerateFn,
    workdir: str,
) -> list[str]:
    """Both reports at the end of `train_and_evaluate` (settings: the run's full evaluation,
    split_names: its eval splits; program: its TrainProgram; results: the last EvalResult of
    each split); returns the summary lines. Nothing for a run without
    eval splits: it decodes nothing, so it measures nothing either."""
    split = efficiency_split(tuple(split_names))
    if split is None or not splits.get(split):
        return []
    from sbsd_jax.model.decode import compiled_decode_bytes

    def compiled_bytes(tokens: np.ndarray) -> int | None:
        global_tokens = jax.make_array_from_callback(
            tokens.shape, program.batch_sharding, lambda index: tokens[index]
        )
        return compiled_decode_bytes(
            program.graphdef,
            params,
            global_tokens,
            max_decode_length=settings.max_decode_length,
            activation_sharding=program.activation_sharding,
        )

    is_primary = jax.process_index() == 0
    efficiency_report = write_efficiency(
        workdir,
        examples=splits[split],
        codec=codec,
        generate=generate,
        parameters=parameter_count(params),
        compute_dtype=str(program.model_config.dtype),
        max_input_length=settings.max_input_length,
        max_decode_length=settings.max_decode_length,
        batch_size=settings.batch_size,
        latency_batch_size=smallest_batch(program.batch_sharding),
        compiled_bytes=compiled_bytes,
        is_primary=is_primary,
    )
    reasoning_reports = []
    if is_primary:
        records = {name: result.records for name, result in results.items()}
        reasoning_reports = write_reasoning(workdir, settings.dataset, records, splits)
    return report_lines(efficiency_report, reasoning_reports, workdir)


def training_mfu_lines(
    shape: mfu.TrainStepShape,
    model_config: object,
    workdir: str,
    *,
    chips: int,
    device: jax.Device,
    chip: str | None = None,
) -> list[str]:
    """Measured MFU of the run's training (sbsd_jax.eval.mfu) from the step times in its
    metrics.jsonl on `chips` x `device` (its kind picks the published peak; `chip` names one
    instead); writes mfu.json. Primary process only: it alone has metrics.jsonl."""
    rows = mfu.read_metrics_rows(workdir)
    if mfu.median_step_seconds(rows) is None:
        return [
            f"measured MFU: n/a ({epath.Path(workdir) / 'metrics.jsonl'} logs no "
            f"{mfu.STEP_SECONDS_METRIC})"
        ]
    peak = mfu.device_peak(device, str(model_config.dtype), chip)
    kind = chip or f"{device.platform}:{device.device_kind}"
    report = mfu.measure(shape, model_config, rows, chips=chips, device=kind, peak=peak)
    path = mfu.write_report(workdir, report)
    return [f"measured MFU of training: {100 * report.mfu:.1f}%", report.table(), f"  mfu: {path}"]


CausalGenerateFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def right_padded_segments(tokens: np.ndarray) -> np.ndarray:
    """Segment ids of right-padded prompt rows (evaluator.batches pads with 0): 1 up to each
    row's last non-zero token (a prompt ends in its answer cue or assistant header, never in
    id 0), and the first slot of an all-pad row, so that it decodes like any other."""
    is_token = tokens != 0
    lengths = np.where(is_token.any(axis=1), tokens.shape[1] - np.argmax(is_token[:, ::-1], 1), 1)
    return (np.arange(tokens.shape[1])[None, :] < lengths[:, None]).astype(np.int32)


def for_causal_training_run(
    settings: EvalSettings,
    split_names: Sequence[str],
    program: object,
    params: object,
    splits: Mapping[str, Sequence[Example]],
    prompt_ids: Callable[[Example], list[int]],
    max_prompt_length: int,
    generate: CausalGenerateFn,
    workdir: str,
) -> list[str]:
    """The efficiency report of a decoder-only student (for_training_run's, timed on the
    prompts its evaluation decodes: `prompt_ids` of an example); [] without eval splits."""
    split = efficiency_split(tuple(split_names))
    if split is None or not splits.get(split):
        return []
    from sbsd_jax.model.decoder_only.decode import compiled_decode_bytes

    def on_mesh(array: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(
            array.shape, program.batch_sharding, lambda index: array[index]
        )

    def generate_rows(tokens: np.ndarray, max_decode_length: int) -> np.ndarray:
        return generate(tokens, right_padded_segments(tokens), max_decode_length)

    def compiled_bytes(tokens: np.ndarray) -> int | None:
        return compiled_decode_bytes(
            program.graphdef,
            params,
            on_mesh(tokens),
            max_decode_length=settings.max_decode_length,
            prompt_segment_ids=on_mesh(right_padded_segments(tokens)),
        )

    report = efficiency.measure(
        generate_rows,
        [prompt_ids(example) for example in splits[split]],
        parameters=parameter_count(params),
        compute_dtype=str(program.model_config.dtype),
        max_input_length=max_prompt_length,
        max_decode_length=settings.max_decode_length,
        batch_size=settings.batch_size,
        latency_batch_size=smallest_batch(program.batch_sharding),
        compiled_bytes=compiled_bytes,
    )
    if jax.process_index() == 0:
        efficiency.write_report(workdir, report)
    return report_lines(report, (), workdir)
