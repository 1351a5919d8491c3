"""Few-shot prompt sets: every built-in set teaches the exact answer shape the data parsers read,
and prompts are rendered in the paper's "Q: ... A: ..." format."""

import json

import pytest

from sbsd_jax.data.examples import cqa_input, nli_input
from sbsd_jax.data.teacher_parsing import parse_completion
from sbsd_jax.teacher.prompt_sets import (
    BUILTIN_PROMPT_SETS,
    PromptSetError,
    load_prompt_set,
)


@pytest.mark.parametrize("dataset", sorted(BUILTIN_PROMPT_SETS))
def test_every_builtin_exemplar_parses_back_to_its_label(dataset):
    prompt_set = load_prompt_set(dataset)
    assert len(prompt_set.exemplars) >= 4
    for exemplar in prompt_set.exemplars:
        written = prompt_set.answer_text(exemplar)
        parsed = parse_completion(dataset, written)
        assert parsed.label == exemplar.label
        assert parsed.rationale == exemplar.rationale


def test_cqa_prompt_is_exemplars_then_question_in_the_paper_format():
    prompt_set = load_prompt_set("cqa", shots=2)
    question = cqa_input("Where do fish live?", ["tree", "water", "desert", "sky", "road"])
    prompt = prompt_set.completion_prompt(question)
    blocks = prompt.split("\n\n")
    assert len(blocks) == 3
    first = prompt_set.exemplars[0]
    assert blocks[0] == (f"Q: {first.input}\nA: {first.rationale} So the answer is {first.answer}.")
    assert blocks[0].startswith(
        "Q: Where would you keep milk so that it stays cold?\n"
        "Answer Choices:\n(a) cupboard\n(b) refrigerator\n"
    )
    assert blocks[0].endswith("So the answer is (b) refrigerator.")
    # The dataset's input already has its "Answer Choices" lines: used as is.
    assert blocks[2] == f"Q: {question}\nA:"


def test_svamp_prompt_writes_equations_in_parentheses():
    prompt = load_prompt_set("svamp", shots=1).completion_prompt("Ann has 3 cats.\nHow many?")
    assert prompt.startswith("Q: A baker made 36 muffins")
    assert "The answer is (36 / 4).\n\nQ: Ann has 3 cats.\nHow many?\nA:" in prompt
    assert prompt.endswith("\nA:")


def test_nli_inputs_are_split_into_premise_and_hypothesis():
    prompt_set = load_prompt_set("esnli", shots=1)
    prompt = prompt_set.completion_prompt(nli_input("A cat sleeps.", "An animal rests."))
    assert prompt.endswith(
        "Premise: A cat sleeps.\nHypothesis: An animal rests.\n"
        "Does the premise entail the hypothesis (entailment), contradict it "
        "(contradiction), or neither (neutral)?\nA:"
    )
    assert "</s>" not in prompt
    with pytest.raises(ValueError, match="premise and hypothesis"):
        prompt_set.completion_prompt("no separator here")


def test_chat_messages_carry_the_same_exemplars_as_turns():
    prompt_set = load_prompt_set("gsm8k", shots=2)
    messages = prompt_set.chat_messages("What is 2 + 2?")
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "user",
        "assistant",
        "user",
    ]
    assert messages[1]["content"] == f"Q: {prompt_set.exemplars[0].input}"
    assert messages[2]["content"].endswith("The answer is 135.")
    assert messages[-1]["content"] == "Q: What is 2 + 2?"


def test_shots_select_the_first_exemplars_and_change_the_fingerprint():
    full = load_prompt_set("cqa")
    three = load_prompt_set("cqa", shots=3)
    assert three.exemplars == full.exemplars[:3]
    assert three.fingerprint() != full.fingerprint()
    assert load_prompt_set("cqa", shots=3).fingerprint() == three.fingerprint()
    with pytest.raises(PromptSetError, match="--shots=99"):
        load_prompt_set("cqa", shots=99)


def _write(tmp_path, payload):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(payload))
    return str(path)


def _own_set(**overrides):
    payload = {
        "name": "mine",
        "dataset": "svamp",
        "query_template": "Q: {input}\nA:",
        "answer_template": "{rationale} The answer is {answer}.",
        "exemplars": [
            {
                "input": "2 and 3?",
                "rationale": "2 + 3 = 5.",
                "answer": "(2 + 3)",
                "label": "(2 + 3)",
            }
        ],
    }
    payload.update(overrides)
    return payload


def test_a_user_prompt_file_is_loaded_and_validated(tmp_path):
    prompt_set = load_prompt_set("svamp", _write(tmp_path, _own_set()))
    assert prompt_set.name == "mine" and prompt_set.stop == ("\n\nQ:",)
    assert prompt_set.completion_prompt("x?").startswith("Q: 2 and 3?\nA: 2 + 3 = 5. The answer")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"answer_template": "{rationale} So it is {answer}."},
            "exemplar 0: the answer does not parse",
        ),
        (
            {"exemplars": [{"input": "q", "rationale": "r", "answer": "(1 + 1)", "label": "2"}]},
            "parses to label '\\(1 \\+ 1\\)'",
        ),
        ({"exemplars": [{"input": "q", "rationale": "r"}]}, "exemplar 0: field 'answer'"),
        ({"query_template": "Q: {question}\nA:"}, "unknown field"),
        ({"dataset": "cqa"}, "field 'dataset' is 'cqa'"),
    ],
)
def test_bad_prompt_files_name_the_file_and_the_problem(tmp_path, overrides, message):
    path = _write(tmp_path, _own_set(**overrides))
    with pytest.raises(PromptSetError, match=message) as error:
        load_prompt_set("svamp", path)
    assert path in str(error.value)


def test_a_prompt_file_that_is_not_json_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  oops\n}')
    with pytest.raises(PromptSetError, match="line 3"):
        load_prompt_set("svamp", str(path))
