"""How many examples the tokeniser's length limits will cut, per split, for the data report.

Inputs longer than max_input_length (and training targets longer than max_target_length) are
not an error: they are trimmed to the limit, EOS kept, as Hugging Face truncation does. But a
rationale cut in half, or a question that loses its answer choices, trains on something else
than the file holds, so the report counts them before training starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence

from sbsd_jax.data.examples import Example
from sbsd_jax.data.features import METHOD_EVAL_TASK, METHOD_TASKS, TASK_KINDS, answer_cue
from sbsd_jax.data.report import DataReport

# Text -> token ids, without EOS (the tasks append one EOS after trimming).
Encode = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class LengthLimits:
    max_input_length: int
    max_target_length: int


def byte_encode(text: str) -> bytes:
    """What seqio.ByteVocabulary encodes to, one id per UTF-8 byte (lengths are all we need)."""
    return text.encode("utf-8")


def vocabulary_name(spec: str) -> str:
    """How the report names the token unit: 'byte', or the SentencePiece model's file name."""
    return "byte" if spec == "byte" else os.path.basename(spec)


def _too_long(encode: Encode, text: str, limit: int) -> bool:
    return len(encode(text)) + 1 > limit  # + EOS


def count_truncations(
    dataset: str,
    method: str,
    splits: Mapping[str, Sequence[Example]],
    encode: Encode,
    limits: LengthLimits,
) -> dict[str, tuple[int, int]]:
    """split -> (examples with a truncated input, examples with a truncated target).

    Train counts every task the method trains on (step_by_step: the predict and explain
    inputs, the label and rationale targets); valid and test count the input the evaluation
    decodes from (their targets are compared as text, never trimmed)."""
    cue = answer_cue(dataset)
    counts = {}
    for split, examples in splits.items():
        kinds = METHOD_TASKS[method] if split == "train" else (METHOD_EVAL_TASK[method],)
        inputs = targets = 0
        for example in examples:
            fields = {
                "input": example.input,
                "label": example.label,
                "rationale": example.rationale,
            }
            tasks = [
                TASK_KINDS[kind]
                for kind in kinds
                if example.rationale or not TASK_KINDS[kind].needs_rationale
            ]
            inputs += any(
                _too_long(encode, task.inputs(fields), limits.max_input_length) for task in tasks
            )
            if split == "train":
                targets += any(
                    _too_long(encode, task.target(fields, cue), limits.max_target_length)
                    for task in tasks
                )
        counts[split] = (inputs, targets)
    return counts


def report_truncations(
    report: DataReport,
    counts: Mapping[str, tuple[int, int]],
    limits: LengthLimits,
    vocabulary: str,
) -> None:
    """Puts `count_truncations`' counts into the report (`vocabulary` names the token unit)."""
    report.length_limits = (limits.max_input_length, limits.max_target_length, vocabulary)
    for split, (inputs, targets) in counts.items():
        if split in report.splits:
            report.splits[split].truncated_inputs = inputs
            report.splits[split].truncated_targets = targets
