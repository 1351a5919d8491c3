"""Teacher-output parsers: same (rationale, label) as the reference recipe on real-shaped
completions, and a clear UnparseableCompletion where the reference would emit a blank label."""

import pytest

from sbsd_jax.data.teacher_parsing import (
    ANSWER_CUES,
    ParsedCompletion,
    UnparseableCompletion,
    extract_cot_answer,
    format_cot_target,
    normalize_number,
    parse_completion,
)

CQA_COMPLETION = (
    "The answer must be something that has to do with the above problem. Of the above choices, "
    "only math problem has to do with the above problem. So the answer is (d) math problem.\n\n"
    'Q: "The man was so hungry he could eat a horse."  What is this an example of?\n'
    "Answer Choices:\n(a) horse\n(b) hunger\n(c) food\n(d) exaggeration\n(e) horse food\n"
    "A: The answer must be something that has to do with the above sentence. So the"
)
SVAMP_COMPLETION = (
    "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42. "
    "The answer is (84 / 2).\n\nQ: There are 120 students in the school. 1/3 of them are boys. "
    "How many students are boys?\nA: There are 120 students. 1/3 of them are boys. "
    "1/3 of 120 is 120 / 3 = 40. The answer is (120 /"
)
ESNLI_COMPLETION = (
    "A man playing a guitar is not necessarily playing for money.\nAnswer: neutral\n\n"
    "Premise: A dog runs.\nHypothesis: An animal moves.\nA dog is an animal. Answer: entailment"
)
ANLI_COMPLETION = (
    "The premise says he was born in 1950, so he is not young. So the answer is contradiction."
    "\n\nPremise: The cat sat.\nHypothesis: A cat.\nSo the answer is"
)


def test_cqa_cuts_the_next_question_and_takes_the_text_after_the_letter():
    parsed = parse_completion("cqa", CQA_COMPLETION)
    assert parsed == ParsedCompletion(
        rationale=(
            "The answer must be something that has to do with the above problem. Of the above "
            "choices, only math problem has to do with the above problem."
        ),
        label="math problem",
    )


def test_cqa_label_stops_at_a_second_letter_and_keeps_inner_periods():
    parsed = parse_completion("cqa", "Because. So the answer is (a) st. louis or (b) paris.")
    assert parsed.label == "st. louis or"


def test_cqa_completion_without_continuation_parses():
    parsed = parse_completion("cqa", "Birds fly. So the answer is (b) sky.")
    assert parsed == ParsedCompletion("Birds fly.", "sky")


def test_cqa_without_choice_letter_is_unparseable():
    with pytest.raises(UnparseableCompletion, match=r"no '\(x\)' choice letter"):
        parse_completion("cqa", "Birds fly. So the answer is sky.\n\nQ: next")


def test_cqa_without_cue_is_unparseable():
    with pytest.raises(UnparseableCompletion, match="no answer cue") as info:
        parse_completion("cqa", "Birds fly and the answer must be (b) sky.")
    assert info.value.reason == "no answer cue 'So the answer is'"
    assert isinstance(info.value, ValueError)


def test_cqa_cue_twice_before_the_cut_is_unparseable():
    with pytest.raises(UnparseableCompletion, match="appears 2 times"):
        parse_completion("cqa", "So the answer is (a) x. So the answer is (b) y.")


def test_svamp_takes_the_parenthesised_equation():
    parsed = parse_completion("svamp", SVAMP_COMPLETION)
    assert parsed.label == "(84 / 2)"
    assert parsed.rationale == (
        "Luke scored 84 points after 2 rounds. So he scored 84 points in 2 rounds. 84 / 2 = 42."
    )


def test_svamp_nested_parentheses_are_kept_whole():
    parsed = parse_completion("svamp", "Steps. The answer is ((18 - 10) * 15).")
    assert parsed.label == "((18 - 10) * 15)"


@pytest.mark.parametrize(
    "completion, reason",
    [
        ("He has 5 apples. 5 + 3 = 8 apples.\n\nQ: next", "no answer cue 'The answer is'"),
        ("He has 8. The answer is 8.\n\nQ: next", "no parenthesised equation after the cue"),
        ("", "no answer cue 'The answer is'"),
    ],
)
def test_svamp_failure_shapes(completion, reason):
    with pytest.raises(UnparseableCompletion) as info:
        parse_completion("svamp", completion)
    assert info.value.reason == reason


def test_esnli_label_is_cut_at_premise_and_rationale_at_first_answer():
    parsed = parse_completion("esnli", ESNLI_COMPLETION)
    assert parsed == ParsedCompletion(
        "A man playing a guitar is not necessarily playing for money.", "neutral"
    )


def test_esnli_without_answer_is_unparseable():
    with pytest.raises(UnparseableCompletion, match="no answer cue 'Answer:'"):
        parse_completion("esnli", "A dog is an animal.")


def test_anli_drops_the_final_period_and_cuts_at_premise():
    parsed = parse_completion("anli1", ANLI_COMPLETION)
    assert parsed == ParsedCompletion(
        "The premise says he was born in 1950, so he is not young.", "contradiction"
    )


def test_anli_keeps_an_answer_without_final_period_whole():
    # The reference would cut the last character ('neutra'); a period is only dropped if present.
    assert parse_completion("anli1", "Unclear. So the answer is neutral").label == "neutral"


def test_anli_without_cue_is_unparseable():
    with pytest.raises(UnparseableCompletion):
        parse_completion("anli1", "Unclear.\n\nPremise: next")


def test_gsm8k_and_synthetic_take_the_number_after_the_cue():
    completion = "3 + 4 = 7. 7 * 2 = 14. The answer is 1,014.\n\nQ: Tom has 2 cups."
    for dataset in ("gsm8k", "synthetic"):
        assert parse_completion(dataset, completion) == ParsedCompletion(
            "3 + 4 = 7. 7 * 2 = 14.", "1014"
        )
    with pytest.raises(UnparseableCompletion, match="no number"):
        parse_completion("synthetic", "Hmm. The answer is unclear.\n\nQ: x")


def test_unknown_dataset_is_an_error_listing_parsers():
    with pytest.raises(ValueError, match="cqa"):
        parse_completion("mnli", "x")


def test_answer_cues_cover_every_dataset():
    assert ANSWER_CUES["cqa"] == "So the answer is"
    assert ANSWER_CUES["svamp"] == "The answer is"
    assert ANSWER_CUES["esnli"] == "Answer:"
    assert ANSWER_CUES["anli1"] == "So the answer is"


def test_cot_target_round_trips_through_extract_cot_answer():
    assert format_cot_target("cqa", "Birds fly.", "sky") == "Birds fly. So the answer is sky"
    assert extract_cot_answer("cqa", "Birds fly. So the answer is sky.") == "sky"
    assert extract_cot_answer("cqa", "Birds fly. So the answer is (b) sky.") == "sky"
    assert extract_cot_answer("svamp", "8 - 3 = 5. The answer is ( 8 - 3 )") == "( 8 - 3 )"
    assert extract_cot_answer("synthetic", "2 + 2 = 4. The answer is 4.") == "4"
    assert extract_cot_answer("esnli", "no cue here") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", "42"),
        ("42.0", "42"),
        ("1,234", "1234"),
        ("-3.50", "-3.5"),
        ("$5.", "5"),
        ("abc", None),
        ("", None),
    ],
)
def test_normalize_number(text, expected):
    assert normalize_number(text) == expected


def test_unparseable_completion_survives_pickling_for_worker_processes():
    import pickle

    error = pickle.loads(pickle.dumps(UnparseableCompletion("cqa", "no cue", "text")))
    assert (error.dataset, error.reason, error.completion) == ("cqa", "no cue", "text")
