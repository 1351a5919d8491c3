"""Decoding-based evaluation of a student on a split: batched greedy decoding, accuracy, JSONL.

The label task is decoded for every example (standard: the bare input; step_by_step: the
'predict:' input; cot: the rationale-then-label output, whose label follows the answer cue).
Optionally the explain task is decoded too, for inspection only, up to its own (longer) length:
rationales are trained at the target length, labels need few tokens. Batches always have the
same shape: `batch_size` rows (missing rows are all-pad and dropped afterwards) and one input
length per split (the longest input, rounded up to a multiple of 64 and capped), so the jitted
decoder compiles once per split and output length.

A long evaluation can be interrupted between batches (`should_stop`, e.g. a SIGTERM on a
preempted VM): it raises EvaluationInterrupted so the caller can checkpoint at once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from sbsd_jax.data.examples import Example
from sbsd_jax.data.features import METHOD_EVAL_TASK, TASK_KINDS
from sbsd_jax.eval.metrics import AccuracyReport, extract_label, is_correct, score
from sbsd_jax.eval.predictions import PredictionRecord

EOS_ID = 1
PAD_ID = 0
LENGTH_QUANTUM = 64

# Decodes a padded int32 [batch, input_length] array of encoder tokens into int32
# [batch, max_decode_length] output tokens (0 after EOS): generate(tokens, max_decode_length).
# The caller binds the model.
GenerateFn = Callable[[np.ndarray, int], np.ndarray]
# What evaluate decodes with, for any student: (examples, rationale task?, max_decode_length,
# should_stop) -> the decoded text of each example's label (or explain) task prompt. T5:
# `codec_outputs`; decoder-only students: sbsd_jax.eval.causal_outputs.
OutputsFn = Callable[[Sequence[Example], bool, int, Callable[[], bool] | None], list[str]]


class EvaluationInterrupted(Exception):
    """`should_stop` said stop between two decoding batches; nothing was scored."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """dataset/method pick the label extraction and metric; the rest fix the decoding shapes."""

    dataset: str
    method: str
    batch_size: int
    max_input_length: int
    max_decode_length: int
    decode_rationales: bool = False
    rationale_max_decode_length: int = 0  # 0 = max_decode_length
    max_examples: int = 0  # 0 = all

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.batch_size}")
        if self.max_decode_length < 1:
            raise ValueError(f"eval_max_decode_length must be >= 1, got {self.max_decode_length}")
        if self.rationale_max_decode_length < 0:
            raise ValueError(
                f"rationale_max_decode_length must be >= 0, got {self.rationale_max_decode_length}"
            )


@dataclasses.dataclass(frozen=True)
class TextCodec:
    """How examples become encoder tokens and output tokens become text.

    encode: text -> token ids without EOS (e.g. a SeqIO vocabulary's encode).
    decode: token ids (EOS and pad already removed) -> text.
    label_input: the label task's input text for an example (e.g. 'predict: ' + input).
    rationale_input: the explain task's input text, None for methods without one.
    """

    encode: Callable[[str], Sequence[int]]
    decode: Callable[[Sequence[int]], str]
    label_input: Callable[[Example], str]
    rationale_input: Callable[[Example], str] | None = None


def text_codec(vocabulary: Any, method: str) -> TextCodec:
    """The codec of a run trained with `method` on `vocabulary` (anything with encode/decode,
    e.g. a SeqIO vocabulary): the label task's input is the method's eval task, the explain
    task's only for step_by_step."""
    label_task = TASK_KINDS[METHOD_EVAL_TASK[method]]
    explain = TASK_KINDS["explain"] if method == "step_by_step" else None
    return TextCodec(
        encode=lambda text: vocabulary.encode(text),
        decode=lambda ids: vocabulary.decode(list(ids)),
        label_input=lambda example: label_task.inputs({"input": example.input}),
        rationale_input=(
            (lambda example: explain.inputs({"input": example.input})) if explain else None
        ),
    )


@dataclasses.dataclass(frozen=True)
class EvalResult:
    split: str
    step: int
    report: AccuracyReport
    records: list[PredictionRecord]
    seconds: float

    def metrics(self) -> dict[str, float]:
        return self.report.as_dict(self.split)


def padded_length(lengths: Sequence[int], max_length: int) -> int:
    """The split's fixed input length: longest input rounded up to LENGTH_QUANTUM, capped."""
    longest = max(lengths, default=1)
    rounded = -(-longest // LENGTH_QUANTUM) * LENGTH_QUANTUM
    return max(1, min(rounded, max_length))


def encode_inputs(
    texts: Sequence[str], encode: Callable[[str], Sequence[int]], max_length: int
) -> list[list[int]]:
    """Token ids + EOS, truncated to max_length (keeping the final EOS, as SeqIO's trimming)."""
    encoded = []
    for text in texts:
        ids = [int(i) for i in encode(text)][: max_length - 1]
        encoded.append(ids + [EOS_ID])
    return encoded


def batches(
    token_rows: Sequence[Sequence[int]], batch_size: int, length: int
) -> Iterator[tuple[np.ndarray, int]]:
    """(int32 [batch_size, length] array, number of real rows); pad rows are all zeros."""
    for start in range(0, len(token_rows), batch_size):
        chunk = token_rows[start : start + batch_size]
        array = np.zeros((batch_size, length), np.int32)
        for row, ids in enumerate(chunk):
            array[row, : len(ids)] = ids[:length]
        yield array, len(chunk)


def strip_output(ids: Sequence[int]) -> list[int]:
    """Output ids up to (not including) the first EOS, without pad."""
    kept = []
    for token in ids:
        token = int(token)
        if token == EOS_ID:
            break
        if token != PAD_ID:
            kept.append(token)
    return kept


def decode_texts(
    texts: Sequence[str],
    codec: TextCodec,
    generate: GenerateFn,
    settings: EvalSettings,
    *,
    max_decode_length: int | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[str]:
    """Greedy outputs for `texts`, in order, in fixed-shape batches (default length: the
    label's). `should_stop` is asked before each batch; True raises EvaluationInterrupted."""
    decode_length = max_decode_length or settings.max_decode_length
    rows = encode_inputs(texts, codec.encode, settings.max_input_length)
    length = padded_length([len(r) for r in rows], settings.max_input_length)
    outputs: list[str] = []
    for tokens, real in batches(rows, settings.batch_size, length):
        if should_stop is not None and should_stop():
            raise EvaluationInterrupted
        generated = np.asarray(generate(tokens, decode_length))
        outputs.extend(codec.decode(strip_output(generated[i])) for i in range(real))
    return outputs


def codec_outputs(codec: TextCodec, generate: GenerateFn, settings: EvalSettings) -> OutputsFn:
    """The encoder-decoder OutputsFn: each task's input text encoded (+ EOS), then decoded."""

    def outputs(
        examples: Sequence[Example],
        rationale: bool,
        max_decode_length: int,
        should_stop: Callable[[], bool] | None,
    ) -> list[str]:
        text_of = codec.rationale_input if rationale else codec.label_input
        return decode_texts(
            [text_of(e) for e in examples],
            codec,
            generate,
            settings,
            max_decode_length=max_decode_length,
            should_stop=should_stop,
        )

    return outputs


def evaluate(
    examples: Sequence[Example],
    *,
    split: str,
    step: int,
    settings: EvalSettings,
    codec: TextCodec | None = None,
    generate: GenerateFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    outputs: OutputsFn | None = None,
    has_rationale_task: bool | None = None,
) -> EvalResult:
    """Decodes and scores `examples`; returns the metrics and one record per example.

    The decoding is `outputs` when given (decoder-only students), else `codec` + `generate`.
    Raises EvaluationInterrupted when `should_stop()` turns True between batches."""
    started = time.perf_counter()
    if settings.max_examples > 0:
        examples = examples[: settings.max_examples]
    if outputs is None:
        outputs = codec_outputs(codec, generate, settings)
        has_rationale_task = codec.rationale_input is not None
    decoded = outputs(examples, False, settings.max_decode_length, should_stop)
    extracted = [extract_label(settings.method, settings.dataset, text) for text in decoded]
    predictions = [label for label, _ in extracted]
    rationales: list[str | None] = [rationale for _, rationale in extracted]
    if settings.decode_rationales and has_rationale_task:
        length = settings.rationale_max_decode_length or settings.max_decode_length
        rationales = list(outputs(examples, True, length, should_stop))
    labels = [e.label for e in examples]
    report = score(settings.dataset, predictions, labels)
    records = [
        PredictionRecord(
            id=example.id,
            input=example.input,
            label=example.label,
            prediction=prediction,
            correct=is_correct(settings.dataset, prediction, example.label),
            rationale=rationale,
        )
        for example, prediction, rationale in zip(examples, predictions, rationales, strict=True)
    ]
    return EvalResult(split, step, report, records, time.perf_counter() - started)
