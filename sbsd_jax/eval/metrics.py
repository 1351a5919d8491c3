"""Scoring decoded label predictions: the paper's exact match and SVAMP's equation accuracy.

Pure functions over strings. The reference decodes with `skip_special_tokens=True` and compares
strings with ==; we also strip surrounding whitespace (byte vocabularies keep it). For SVAMP
(and the numeric GSM8K / synthetic tasks) the reference evaluates both equations and compares
values; `sbsd_jax.data.equation` does that without `eval`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from sbsd_jax.data.equation import equations_equal
from sbsd_jax.data.teacher_parsing import ANSWER_CUES, extract_cot_answer

# Datasets whose labels are arithmetic (an equation or a number): scored by value as well.
NUMERIC_DATASETS: frozenset[str] = frozenset({"svamp", "gsm8k", "synthetic"})
METHODS: tuple[str, ...] = ("standard", "step_by_step", "cot")


def exact_match(prediction: str, label: str) -> bool:
    """The paper's accuracy criterion: the decoded label equals the reference label."""
    return prediction.strip() == label.strip()


def equation_match(prediction: str, label: str) -> bool:
    """Both sides evaluate to the same number (unevaluable text never matches)."""
    return equations_equal(prediction, label)


def uses_equation_accuracy(dataset: str) -> bool:
    return dataset in NUMERIC_DATASETS


def extract_label(method: str, dataset: str, decoded: str) -> tuple[str, str | None]:
    """(label, rationale) read from one decoded label-task output.

    standard / step_by_step decode the label directly; cot decodes "rationale <cue> label" and
    the label is what follows the dataset's answer cue ("" when the cue is missing, which
    scores as wrong), the rationale what precedes it.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if method != "cot":
        return decoded.strip(), None
    answer = extract_cot_answer(dataset, decoded)
    cue = ANSWER_CUES[dataset]
    rationale = decoded.rsplit(cue, 1)[0].strip() if cue in decoded else decoded.strip()
    return (answer or "").strip(), rationale


def is_correct(dataset: str, prediction: str, label: str) -> bool:
    """The per-example criterion behind the headline accuracy of `dataset`."""
    if uses_equation_accuracy(dataset):
        return equation_match(prediction, label)
    return exact_match(prediction, label)


@dataclasses.dataclass(frozen=True)
class AccuracyReport:
    """accuracy: exact match (the paper's metric for CQA/e-SNLI/ANLI).
    equation_accuracy: value match, for numeric datasets only (the paper's SVAMP metric).
    primary: the one the paper reports for this dataset; checkpoints are ranked by it."""

    num_examples: int
    accuracy: float
    equation_accuracy: float | None

    @property
    def primary(self) -> float:
        return self.accuracy if self.equation_accuracy is None else self.equation_accuracy

    def as_dict(self, prefix: str) -> dict[str, float]:
        values = {f"{prefix}_accuracy": self.primary, f"{prefix}_exact_match": self.accuracy}
        if self.equation_accuracy is not None:
            values[f"{prefix}_equation_accuracy"] = self.equation_accuracy
        values[f"{prefix}_num_examples"] = float(self.num_examples)
        return values


def score(dataset: str, predictions: Sequence[str], labels: Sequence[str]) -> AccuracyReport:
    """Accuracy of already-extracted label predictions against reference labels."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    count = len(labels)
    if count == 0:
        return AccuracyReport(0, 0.0, 0.0 if uses_equation_accuracy(dataset) else None)
    exact = sum(exact_match(p, label) for p, label in zip(predictions, labels, strict=True))
    equation = None
    if uses_equation_accuracy(dataset):
        matches = sum(equation_match(p, lab) for p, lab in zip(predictions, labels, strict=True))
        equation = matches / count
    return AccuracyReport(count, exact / count, equation)
