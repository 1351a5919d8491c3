"""The demo's world task: deterministic, fair splits, knowledge only in the teacher's rationale."""

from __future__ import annotations

import json

import pytest

from sbsd_jax.data import synthetic_world as world
from sbsd_jax.data.paper_layout import load_paper_layout
from sbsd_jax.data.teacher_parsing import UnparseableCompletion, parse_completion


def test_the_world_is_a_pure_function_of_its_seed() -> None:
    config = world.WorldConfig(seed=3, creatures_per_kind=4)
    assert world.split_questions(config) == world.split_questions(config)
    assert world.make_creatures(config) != world.make_creatures(world.WorldConfig(seed=4))


def test_each_attribute_value_belongs_to_exactly_one_kind() -> None:
    for attribute in world.ATTRIBUTES:
        values = [facts[attribute] for _, facts in world.KINDS.values()]
        assert len(set(values)) == len(world.KINDS)


def test_test_questions_are_new_combinations_of_seen_creatures() -> None:
    splits = world.split_questions(world.WorldConfig(seed=0, creatures_per_kind=6))
    pairs = {s: {(q.creature, q.attribute) for q in qs} for s, qs in splits.items()}
    texts = {s: {q.text for q in qs} for s, qs in splits.items()}
    assert not pairs["test"] & (pairs["train"] | pairs["valid"])
    assert not texts["test"] & (texts["train"] | texts["valid"])
    assert not pairs["valid"] & pairs["train"]
    # every creature asked about at test time has training questions (both methods can know it)
    assert {c for c, _ in pairs["test"]} <= {c for c, _ in pairs["train"]}


def test_the_input_names_the_creature_but_never_its_kind() -> None:
    splits = world.split_questions(world.WorldConfig(seed=0))
    for question in splits["train"] + splits["test"]:
        assert question.creature in question.text
        assert not any(kind in question.text.lower().split() for kind in world.KINDS)
        assert world.question_attribute(question.text) == question.attribute
    assert world.question_attribute("How many apples does Tom have?") is None


def test_a_correct_rationale_states_the_kind_and_the_kinds_fact() -> None:
    question = world.Question("zorbit", "fish", "food")
    rationale, answer = world.rationale_for(question, "fish")
    assert rationale == "A zorbit is a kind of fish. Fish eat plankton."
    assert answer == question.answer == "plankton"


def test_written_layout_reads_back_through_the_real_reader_and_parser(tmp_path) -> None:
    config = world.WorldConfig(seed=1, creatures_per_kind=6, wrong_answer_rate=0.2)
    world.write_paper_layout(str(tmp_path), config)
    data = load_paper_layout(world.DATASET_NAME, str(tmp_path))
    splits = world.split_questions(config)
    for split, questions in splits.items():
        examples = data.splits[split]
        assert [e.input for e in examples] == [q.text for q in questions]
        assert [e.label for e in examples] == [q.answer for q in questions]
        wrong = unparsed = 0
        for question, output in zip(questions, data.teacher[split], strict=True):
            if output.parse_error is not None:
                unparsed += 1
                continue
            kind = output.rationale.split(" is a kind of ")[1].split(".")[0]
            assert output.llm_label == world.KINDS[kind][1][question.attribute]
            assert "Q:" not in output.rationale  # the continuation was cut off
            wrong += kind != question.kind
        if split == "train":
            assert 0 < wrong < len(questions) * 0.35 and unparsed < len(questions) * 0.15


def test_an_unparseable_completion_is_reported_not_guessed() -> None:
    with pytest.raises(UnparseableCompletion, match="no answer cue"):
        parse_completion(world.DATASET_NAME, "A zorbit is a kind of fi")


def test_records_are_json_lines_with_input_and_label(tmp_path) -> None:
    world.write_paper_layout(str(tmp_path), world.WorldConfig(creatures_per_kind=2))
    path = tmp_path / world.DATASET_NAME / f"{world.DATASET_NAME}_test.json"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows and all(set(row) == {"id", "input", "label"} for row in rows)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="test_attributes_per_creature"):
        world.WorldConfig(test_attributes_per_creature=4)
    with pytest.raises(ValueError, match="wrong_answer_rate"):
        world.WorldConfig(wrong_answer_rate=0.9, unparseable_rate=0.2)
