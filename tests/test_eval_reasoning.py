"""Reasoning analysis on hand-made rationales: equations found and checked, the answer a
rationale reaches, why a wrong math answer is wrong, and the side-by-side markdown."""

from __future__ import annotations

import pytest

from sbsd_jax.eval import reasoning
from sbsd_jax.eval.predictions import PredictionRecord


def record(id_, rationale, prediction, label, correct=None, input_="Q"):
    if correct is None:
        correct = prediction == label
    return PredictionRecord(id_, input_, label, prediction, correct, rationale)


def test_equations_are_found_in_order_and_checked_with_the_safe_evaluator():
    text = (
        "Ann starts with 9 shells. She loses 7, so 9 - 7 = 2. She doubles them, so 2 * 2 = 5. "
        "So they planted 10 * 45 seeds. 10 * 45 is 450. He had 10 - (3 + 6) = 1 left."
    )
    found = reasoning.extract_equations(text)
    assert [(e.expression, e.stated, e.correct) for e in found] == [
        ("9 - 7", 2.0, True),
        ("2 * 2", 5.0, False),
        ("10 * 45", 450.0, True),
        ("10 - (3 + 6)", 1.0, True),
    ]
    # A number alone is not an equation; a sentence-final period is not a decimal point.
    assert reasoning.extract_equations("There are 12 = twelve cups. 4 = 4.") == []


def test_malformed_attempts_count_as_wrong_equations():
    # What the demo's tiny student writes after 400 steps.
    text = "She triples them, so 8 * * = 12. He sells 6, so 6 6 6 = 1. He loses 5, so 6 - - = 1."
    found = reasoning.extract_equations(text)
    assert [(e.expression, e.stated, e.value) for e in found] == [
        ("8 * *", 12.0, None),
        ("6 6 6", 1.0, None),
        ("6 - -", 1.0, None),
    ]
    assert not any(e.correct for e in found)


def test_the_answer_a_rationale_reaches_cue_first_then_the_last_equation():
    assert reasoning.rationale_answer("synthetic", "so 3 + 4 = 7. Then 7 * 2 = 14.") == "14"
    assert reasoning.rationale_answer("synthetic", "3 + 4 = 7. The answer is 9.") == "9"
    assert reasoning.rationale_answer("cqa", "Beavers build dams. So the answer is (c) wood.") == (
        "wood"
    )
    assert reasoning.rationale_answer("cqa", "Beavers build dams near water.") is None
    # SVAMP labels are equations, compared by value.
    assert reasoning.answers_agree("svamp", "450", "( 10.0 * 45.0 )")
    assert not reasoning.answers_agree("svamp", "451", "( 10.0 * 45.0 )")


def eqs(text):
    return reasoning.extract_equations(text)


@pytest.mark.parametrize(
    "student, expected",
    [
        ("9 - 7 = 3. 3 * 2 = 6.", "wrong_step"),  # first step miscomputed
        ("9 - 7 = 2. 2 * 2 = 5.", "wrong_final_operation"),  # last step miscomputed
        ("9 - 7 = 2. 2 + 2 = 4.", "label_not_from_rationale"),  # same values as the teacher
        ("9 - 7 = 2. 2 * 3 = 6.", "wrong_final_operation"),  # right arithmetic, wrong operation
        ("9 + 7 = 16. 16 * 2 = 32.", "wrong_step"),  # right arithmetic, wrong first operation
        ("9 - 7 = 2.", "wrong_final_operation"),  # stopped before the last operation
        ("She has some shells left.", "no_equations"),
    ],
)
def test_a_wrong_answer_is_blamed_on_the_first_step_that_diverges(student, expected):
    teacher = eqs("9 - 7 = 2. 2 * 2 = 4.")
    assert reasoning.classify_error(eqs(student), teacher) == expected


def test_without_a_sound_teacher_rationale_only_arithmetic_decides():
    assert reasoning.classify_error(eqs("9 + 7 = 16. 16 * 2 = 32."), None) == (
        "label_not_from_rationale"
    )


def test_report_counts_arithmetic_errors_agreement_and_wrong_answer_causes():
    records = [
        record("a", "Ann has 9. 9 - 7 = 2. 2 * 2 = 4.", "4", "4"),
        record("b", "Bo has 5. 5 + 3 = 9. 9 * 2 = 18.", "18", "16"),  # slip in step 1
        record("c", "Cy has 6. 6 - 1 = 5. 5 * 3 = 15.", "12", "10"),  # disagrees, final op
        record("d", "Di has 4.", "8", "8"),  # no equation, no stated answer
        record("e", None, "3", "3"),  # rationale not decoded: left out
    ]
    teacher = {
        "a": "Ann starts with 9. 9 - 7 = 2. 2 * 2 = 4.",
        "b": "Bo starts with 5. 5 + 3 = 8. 8 * 2 = 16.",
        "c": "Cy starts with 6. 6 - 1 = 5. 5 * 2 = 10.",
        "d": "Di starts with 4. 4 * 2 = 8.",
    }
    report = reasoning.analyse("synthetic", "test", records, teacher)
    assert report.examples == 4
    assert report.equations_checked == 6
    assert report.arithmetic_error_rate == pytest.approx(1 / 6)
    assert report.rationale_states_answer == pytest.approx(3 / 4)
    assert report.rationale_agrees_with_label == pytest.approx(2 / 3)  # a and b, not c
    assert report.wrong_answers == 2
    assert report.wrong_answer_causes == {
        "wrong_step": 1,
        "wrong_final_operation": 1,
        "label_not_from_rationale": 0,
        "no_equations": 0,
    }
    assert report.teacher_rationale_words == pytest.approx((14 + 14 + 14 + 9) / 4)  # words
    lines = "\n".join(report.summary_lines())
    assert "6 equations checked, 16.7% wrong (0 of them malformed)" in lines
    assert "wrong_step 1" in lines


def test_non_math_reports_have_no_arithmetic_fields():
    records = [
        record("a", "Dams are wooden. So the answer is (c) wooded area.", "wooded area", "x")
    ]
    report = reasoning.analyse("cqa", "test", records, {"a": "Beavers use wood."})
    assert report.rationale_agrees_with_label == 1.0
    assert report.equations_checked is None and report.wrong_answer_causes is None


def test_side_by_side_markdown_shows_both_rationales_and_escapes_table_syntax():
    records = [
        record(f"id{i}", f"student {i} | a\nb", "4", "4" if i % 2 else "5", input_=f"q{i}")
        for i in range(6)
    ]
    teacher = {f"id{i}": f"teacher {i}" for i in range(6)}
    text = reasoning.side_by_side_markdown("synthetic", "test", records, teacher, sample=3)
    rows = [line for line in text.splitlines() if line.startswith("| id")]
    assert len(rows) == 3
    assert "3 of 6 examples" in text
    for row in rows:
        index = row.split("|")[1].strip().removeprefix("id")
        assert f"teacher {index}" in row and f"student {index} \\| a<br>b" in row
    assert "✓" in text or "✗" in text
