"""What was loaded: per-split counts, teacher parse failures and teacher accuracy, printed
before training so bad teacher files or a wrong layout are seen at once."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

from sbsd_jax.data.equation import equations_equal
from sbsd_jax.data.teacher_parsing import normalize_number

EQUATION_DATASETS = ("svamp",)
NUMBER_DATASETS = ("gsm8k", "synthetic")


def labels_match(dataset: str, predicted: str | None, gold: str) -> bool:
    """Teacher (or model) label vs the human label: equation value for SVAMP (as the
    reference's compute_equation_acc), numeric value for GSM8K/synthetic, exact text otherwise
    (as compute_text_acc). A missing prediction never matches."""
    if predicted is None:
        return False
    if dataset in EQUATION_DATASETS:
        return equations_equal(predicted, gold)
    if dataset in NUMBER_DATASETS:
        left, right = normalize_number(predicted), normalize_number(gold)
        return left is not None and left == right
    return predicted == gold


@dataclasses.dataclass
class SplitReport:
    """One split after subsampling/carving, before unparseable examples are dropped.

    teacher_accuracy counts an unparseable completion as wrong (what the reference's blank
    label gives); teacher_accuracy_parsed only looks at parsed completions.
    """

    split: str
    origin: str
    num_examples: int = 0
    num_teacher_outputs: int = 0
    parse_failures: int = 0
    failure_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    dropped_unparseable: int = 0
    teacher_correct: int = 0
    label_fallbacks_to_gt: int = 0
    # Examples whose input / target the length limits trim (DataReport.length_limits; see
    # sbsd_jax.data.truncation); 0 when they were not counted.
    truncated_inputs: int = 0
    truncated_targets: int = 0

    # False when the teacher's outputs carry rationales but no labels (e.g. JSONL rows with
    # `rationale` and no `llm_label`): there is no teacher accuracy to report then.
    teacher_labels: bool = True

    @property
    def teacher_accuracy(self) -> float | None:
        if not self.num_teacher_outputs or not self.teacher_labels:
            return None
        return self.teacher_correct / self.num_teacher_outputs

    @property
    def teacher_accuracy_parsed(self) -> float | None:
        parsed = self.num_teacher_outputs - self.parse_failures
        return self.teacher_correct / parsed if parsed and self.teacher_labels else None


@dataclasses.dataclass
class DataReport:
    dataset: str
    source: str
    label_type: str
    train_fraction: float
    splits: dict[str, SplitReport] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    # (max_input_length, max_target_length, vocabulary) the truncations were counted for.
    length_limits: tuple[int, int, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        result = dataclasses.asdict(self)
        for name, split in self.splits.items():
            result["splits"][name]["teacher_accuracy"] = split.teacher_accuracy
            result["splits"][name]["teacher_accuracy_parsed"] = split.teacher_accuracy_parsed
        return result

    def format(self) -> str:
        lines = [
            f"dataset={self.dataset} source={self.source} label_type={self.label_type} "
            f"train_fraction={self.train_fraction}",
            f"{'split':<6} {'examples':>8} {'teacher':>8} {'unparsed':>8} {'dropped':>8} "
            f"{'teacher acc':>11} {'acc (parsed)':>12}  from",
        ]
        for split in self.splits.values():
            accuracy = _percent(split.teacher_accuracy)
            parsed_accuracy = _percent(split.teacher_accuracy_parsed)
            lines.append(
                f"{split.split:<6} {split.num_examples:>8} {split.num_teacher_outputs:>8} "
                f"{split.parse_failures:>8} {split.dropped_unparseable:>8} {accuracy:>11} "
                f"{parsed_accuracy:>12}  {split.origin}"
            )
        for split in self.splits.values():
            for reason, count in sorted(split.failure_reasons.items(), key=lambda kv: -kv[1]):
                lines.append(f"  {split.split}: {count} x {reason}")
            if split.truncated_inputs or split.truncated_targets:
                lines.append(f"  {split.split}: {self._truncation_text(split)}")
            if split.label_fallbacks_to_gt:
                lines.append(
                    f"  {split.split}: {split.label_fallbacks_to_gt} kept unparseable examples "
                    "train on the human label (no teacher label)"
                )
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    def _truncation_text(self, split: SplitReport) -> str:
        assert self.length_limits is not None
        max_input, max_target, vocabulary = self.length_limits
        parts = []
        if split.truncated_inputs:
            parts.append(f"{split.truncated_inputs} inputs over max_input_length={max_input}")
        if split.truncated_targets:
            parts.append(f"{split.truncated_targets} targets over max_target_length={max_target}")
        return f"{' and '.join(parts)} ({vocabulary} tokens, EOS included) are truncated"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def count_reasons(reasons: Sequence[str]) -> dict[str, int]:
    return dict(collections.Counter(reasons))
