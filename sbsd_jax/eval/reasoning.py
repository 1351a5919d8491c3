"""How a student reasons: its decoded rationales next to the teacher's, and where math goes wrong.

Input: the evaluated records of one split whose explain task was decoded
(`config.decode_rationales`), joined by id with the teacher's rationales. Output: average
rationale lengths, how often the answer a rationale arrives at agrees with the label the student
predicted (the `predict:` task is decoded separately, so they can disagree), and for the math
datasets (SVAMP, GSM8K, synthetic) every `expression = result` the student writes checked with
the safe evaluator: the arithmetic error rate, and for each wrong answer whether it comes from a
wrong step, a wrong final operation, or a label that does not follow from a sound rationale.
A markdown file shows teacher and student rationales side by side for a sample.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence

from sbsd_jax.data.equation import evaluate_equation
from sbsd_jax.data.teacher_parsing import ANSWER_CUES, extract_cot_answer, normalize_number
from sbsd_jax.eval.metrics import NUMERIC_DATASETS
from sbsd_jax.eval.predictions import PredictionRecord

# `<arithmetic> = <number>` or `<arithmetic> is <number>`. The left side is what a student
# writes there, well-formed or not ("8 * * = 12", "3 3 3 = 1" count as miscomputed attempts);
# it needs an operator or two numbers, so "4 = 4" or "has 12 = twelve" are not equations.
_EQUATION = re.compile(
    r"(?P<expression>(?:\d|\.\d|\()(?:[\d\s()+\-*/x×]|\.(?=\d))*?)"
    r"\s*(?:=|\bis\b)\s*\$?(?P<result>-?[\d,]*\.?\d+)"
)
_ATTEMPT = re.compile(r"[-+*/x×]|\d\s+\d")

ERROR_KINDS = ("wrong_step", "wrong_final_operation", "label_not_from_rationale", "no_equations")


@dataclasses.dataclass(frozen=True)
class Equation:
    """One `expression = result` as written; value is None when the expression is not
    arithmetic the safe evaluator accepts."""

    expression: str
    stated: float
    value: float | None

    @property
    def correct(self) -> bool:
        return self.value is not None and math.isclose(
            self.value, self.stated, rel_tol=1e-6, abs_tol=1e-6
        )


def extract_equations(text: str) -> list[Equation]:
    """Every `a op b ... = c` (or `... is c`) in `text`, in order; 'x'/'×' read as '*'.
    A left side the safe evaluator refuses has value None (and is not correct)."""
    found = []
    for match in _EQUATION.finditer(text or ""):
        expression = match["expression"].strip()
        if not _ATTEMPT.search(expression):
            continue
        stated = normalize_number(match["result"])
        if stated is None:
            continue
        value = evaluate_equation(expression.replace("×", "*").replace("x", "*"))
        found.append(Equation(expression, float(stated), value))
    return found


def label_value(dataset: str, label: str) -> float | None:
    """The number a label stands for: SVAMP labels are equations, GSM8K/synthetic numbers."""
    if dataset == "svamp":
        return evaluate_equation(label)
    number = normalize_number(label)
    return None if number is None else float(number)


def rationale_answer(dataset: str, rationale: str) -> str | None:
    """The answer a rationale arrives at: after the dataset's answer cue when it states one,
    else (math datasets) the result of its last equation; None when it states neither."""
    if ANSWER_CUES[dataset] in rationale:
        return extract_cot_answer(dataset, rationale)
    if dataset in NUMERIC_DATASETS:
        equations = extract_equations(rationale)
        return normalize_number(str(equations[-1].stated)) if equations else None
    return None


def answers_agree(dataset: str, answer: str, label: str) -> bool:
    if dataset in NUMERIC_DATASETS:
        left, right = label_value(dataset, answer), label_value(dataset, label)
        return left is not None and right is not None and math.isclose(left, right)
    return answer.strip().lower() == label.strip().lower()


def classify_error(student: Sequence[Equation], reference: Sequence[Equation] | None) -> str:
    """Why a wrong math answer is wrong, from the student's equations and (when the teacher's
    rationale was right) the teacher's: the first equation that is miscomputed or reaches
    another value than the teacher's at the same position decides. Not the last one:
    'wrong_step'; the last one: 'wrong_final_operation'. None diverges:
    'label_not_from_rationale' (or, with fewer equations than the teacher, the missing last
    operation: 'wrong_final_operation')."""
    if not student:
        return "no_equations"
    for index, equation in enumerate(student):
        diverges = not equation.correct
        if reference is not None and index < len(reference):
            diverges = diverges or not math.isclose(equation.stated, reference[index].stated)
        if diverges:
            return "wrong_final_operation" if index == len(student) - 1 else "wrong_step"
    if reference is not None and len(student) < len(reference):
        return "wrong_final_operation"
    return "label_not_from_rationale"


@dataclasses.dataclass(frozen=True)
class ReasoningReport:
    dataset: str
    split: str
    examples: int  # with a decoded student rationale
    teacher_rationale_words: float | None
    student_rationale_words: float
    rationale_states_answer: float  # share whose rationale arrives at an answer
    rationale_agrees_with_label: float  # share of those whose answer is the predicted label
    equations_checked: int | None = None  # math datasets only, from here on
    arithmetic_error_rate: float | None = None  # miscomputed or malformed, of those checked
    malformed_equations: int | None = None  # left side not arithmetic ("8 * * = 12")
    wrong_answers: int | None = None
    wrong_answer_causes: dict[str, int] | None = None

    def summary_lines(self) -> list[str]:
        teacher = (
            "n/a" if self.teacher_rationale_words is None else f"{self.teacher_rationale_words:.1f}"
        )
        lines = [
            f"reasoning ({self.split}, {self.examples} rationales): words per rationale "
            f"teacher {teacher}, student {self.student_rationale_words:.1f}; the student's "
            f"rationale states an answer in {100 * self.rationale_states_answer:.1f}%, "
            f"agreeing with its predicted label in {100 * self.rationale_agrees_with_label:.1f}%"
        ]
        if self.equations_checked is not None:
            rate = self.arithmetic_error_rate or 0.0
            causes = ", ".join(f"{k} {v}" for k, v in (self.wrong_answer_causes or {}).items())
            lines.append(
                f"  arithmetic: {self.equations_checked} equations checked, "
                f"{100 * rate:.1f}% wrong ({self.malformed_equations} of them malformed); "
                f"{self.wrong_answers} wrong answers: {causes}"
            )
        return lines


def _words(text: str) -> int:
    return len(text.split())


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def analyse(
    dataset: str,
    split: str,
    records: Sequence[PredictionRecord],
    teacher_rationales: Mapping[str, str | None],
) -> ReasoningReport:
    """Statistics over the records that carry a decoded rationale."""
    rows = [r for r in records if r.rationale is not None]
    teacher = [teacher_rationales.get(r.id) for r in rows]
    answers = [rationale_answer(dataset, r.rationale or "") for r in rows]
    stated = [(a, r) for a, r in zip(answers, rows, strict=True) if a is not None]
    agree = [answers_agree(dataset, a, r.prediction) for a, r in stated]
    known_teacher = [_words(t) for t in teacher if t]
    report = ReasoningReport(
        dataset=dataset,
        split=split,
        examples=len(rows),
        teacher_rationale_words=_mean(known_teacher) if known_teacher else None,
        student_rationale_words=_mean([_words(r.rationale or "") for r in rows]),
        rationale_states_answer=len(stated) / len(rows) if rows else 0.0,
        rationale_agrees_with_label=_mean([float(a) for a in agree]),
    )
    if dataset not in NUMERIC_DATASETS:
        return report
    equations = [e for r in rows for e in extract_equations(r.rationale or "")]
    causes: Counter[str] = Counter({kind: 0 for kind in ERROR_KINDS})
    for record, teacher_text in zip(rows, teacher, strict=True):
        if record.correct:
            continue
        reference = _reference_equations(dataset, teacher_text, record.label)
        causes[classify_error(extract_equations(record.rationale or ""), reference)] += 1
    return dataclasses.replace(
        report,
        equations_checked=len(equations),
        arithmetic_error_rate=_mean([float(not e.correct) for e in equations]),
        malformed_equations=sum(e.value is None for e in equations),
        wrong_answers=sum(causes.values()),
        wrong_answer_causes=dict(causes),
    )


def _reference_equations(dataset: str, teacher: str | None, label: str) -> list[Equation] | None:
    """The teacher's equations, when they are all right and reach the gold label."""
    if not teacher:
        return None
    equations = extract_equations(teacher)
    answer = rationale_answer(dataset, teacher)
    sound = equations and all(e.correct for e in equations)
    if not sound or answer is None or not answers_agree(dataset, answer, label):
        return None
    return equations


def _cell(text: str | None) -> str:
    if text is None:
        return "_(none)_"
    return text.replace("|", "\\|").replace("\n", "<br>") or "_(empty)_"


def side_by_side_markdown(
    dataset: str,
    split: str,
    records: Sequence[PredictionRecord],
    teacher_rationales: Mapping[str, str | None],
    *,
    sample: int = 20,
    seed: int = 0,
) -> str:
    """Markdown: for `sample` records (seeded choice, in split order), the input, gold label,
    prediction, and teacher and student rationales side by side."""
    rows = [r for r in records if r.rationale is not None]
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(sample, len(rows))))
    lines = [
        f"# Teacher and student rationales: {dataset} {split}",
        "",
        f"{len(chosen)} of {len(rows)} examples with a decoded rationale (seed {seed}).",
        "",
        "| # | input | label | student predicts | teacher rationale | student rationale |",
        "|---|---|---|---|---|---|",
    ]
    for index in chosen:
        record = rows[index]
        mark = "✓" if record.correct else "✗"
        lines.append(
            f"| {record.id} | {_cell(record.input)} | {_cell(record.label)} | "
            f"{_cell(record.prediction)} {mark} | {_cell(teacher_rationales.get(record.id))} | "
            f"{_cell(record.rationale)} |"
        )
    return "\n".join(lines) + "\n"
