"""Evaluation metrics: exact match, equation accuracy, CoT label extraction, prediction files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sbsd_jax.data.examples import Example
from sbsd_jax.eval.evaluator import (
    EvalSettings,
    EvaluationInterrupted,
    TextCodec,
    encode_inputs,
    evaluate,
    padded_length,
    strip_output,
)
from sbsd_jax.eval.metrics import extract_label, is_correct, score
from sbsd_jax.eval.predictions import PredictionRecord, read_predictions, write_predictions


def test_exact_match_accuracy_ignores_only_surrounding_whitespace():
    report = score("cqa", ["bank ", "river", "Bank"], ["bank", "bank", "bank"])
    assert report.num_examples == 3
    assert report.accuracy == pytest.approx(1 / 3)
    assert report.equation_accuracy is None
    assert report.primary == report.accuracy


def test_svamp_is_scored_by_the_value_of_the_equation():
    predictions = ["( 84.0 / 2.0 )", "(2+40)", "( 84.0 * 2.0 )", "__import__('os')", ""]
    labels = ["( 84.0 / 2.0 )"] * 5
    report = score("svamp", predictions, labels)
    assert report.accuracy == pytest.approx(1 / 5)  # only the identical string
    assert report.equation_accuracy == pytest.approx(2 / 5)  # 42 twice; garbage never matches
    assert report.primary == report.equation_accuracy
    assert is_correct("svamp", "(2+40)", "( 84.0 / 2.0 )")
    assert not is_correct("cqa", "(2+40)", "( 84.0 / 2.0 )")


def test_numeric_answers_match_by_value():
    assert is_correct("gsm8k", "42.0", "42")
    assert is_correct("synthetic", "7", "(3 + 4)")
    assert not is_correct("synthetic", "8", "(3 + 4)")


def test_metric_dict_names_the_split_and_reports_the_primary_metric_as_accuracy():
    values = score("svamp", ["(1+1)"], ["2"]).as_dict("valid")
    assert values["valid_accuracy"] == 1.0
    assert values["valid_exact_match"] == 0.0
    assert values["valid_equation_accuracy"] == 1.0
    assert values["valid_num_examples"] == 1.0


def test_empty_split_scores_zero_and_mismatched_lengths_are_rejected():
    assert score("cqa", [], []).accuracy == 0.0
    with pytest.raises(ValueError, match="2 predictions for 1 labels"):
        score("cqa", ["a", "b"], ["a"])


def test_standard_and_step_by_step_decode_the_label_directly():
    assert extract_label("standard", "cqa", " bank ") == ("bank", None)
    assert extract_label("step_by_step", "svamp", "( 3 + 4 )") == ("( 3 + 4 )", None)


def test_cot_label_is_the_text_after_the_last_answer_cue():
    label, rationale = extract_label(
        "cot", "cqa", "People keep money in banks. So the answer is bank."
    )
    assert (label, rationale) == ("bank", "People keep money in banks.")
    label, rationale = extract_label(
        "cot", "svamp", "He had 3 and got 4 more. The answer is ( 3.0 + 4.0 )."
    )
    assert label == "( 3.0 + 4.0 )"
    assert rationale == "He had 3 and got 4 more."


def test_cot_output_without_the_cue_has_an_empty_label_that_scores_wrong():
    label, rationale = extract_label("cot", "cqa", "I am not sure")
    assert label == "" and rationale == "I am not sure"
    assert not is_correct("cqa", label, "bank")


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method 'distill'"):
        extract_label("distill", "cqa", "x")


def test_predictions_are_written_as_one_json_object_per_line(tmp_path):
    records = [
        PredictionRecord(id="a", input="q1", label="x", prediction="x", correct=True),
        PredictionRecord(
            id="b", input="q2", label="y", prediction="z", correct=False, rationale="because"
        ),
    ]
    path = write_predictions(tmp_path / "predictions" / "valid_step_10.jsonl", records)
    lines = path.read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b"]
    assert json.loads(lines[1]) == {
        "id": "b",
        "input": "q2",
        "label": "y",
        "prediction": "z",
        "correct": False,
        "rationale": "because",
    }
    assert read_predictions(path) == records


# --- The evaluator, with a stand-in decoder that echoes its input -----------------------------


def _codec(prefix: str = "") -> TextCodec:
    return TextCodec(
        encode=lambda text: [b + 3 for b in text.encode()],
        decode=lambda ids: bytes(i - 3 for i in ids).decode(),
        label_input=lambda example: prefix + example.input,
        rationale_input=lambda example: "explain: " + example.input,
    )


class _EchoDecoder:
    """Returns each row's input tokens as its output, cut to the requested output length
    (0-padded), and records the input shapes and output lengths asked for."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.decode_lengths: list[int] = []

    def __call__(self, tokens: np.ndarray, max_decode_length: int) -> np.ndarray:
        self.shapes.append(tokens.shape)
        self.decode_lengths.append(max_decode_length)
        out = np.zeros((tokens.shape[0], max_decode_length), np.int32)
        width = min(tokens.shape[1], max_decode_length)
        out[:, :width] = tokens[:, :width]
        return out


def _examples(count: int) -> list[Example]:
    # Every third example's label differs from its input, so the echo gets it wrong.
    return [
        Example(id=str(i), input=f"{i}+1", label=f"{i}+1" if i % 3 else "wrong")
        for i in range(count)
    ]


def test_evaluate_pads_to_fixed_batches_and_scores_every_real_example():
    settings = EvalSettings(
        dataset="cqa", method="standard", batch_size=4, max_input_length=512, max_decode_length=16
    )
    decoder = _EchoDecoder()
    result = evaluate(
        _examples(10), split="valid", step=7, settings=settings, codec=_codec(), generate=decoder
    )
    assert decoder.shapes == [(4, 64)] * 3  # 10 examples -> 3 batches of one fixed shape
    assert [r.id for r in result.records] == [str(i) for i in range(10)]
    assert result.report.num_examples == 10
    assert result.report.accuracy == pytest.approx(6 / 10)
    assert result.metrics()["valid_accuracy"] == pytest.approx(0.6)
    assert [r.correct for r in result.records][:4] == [False, True, True, False]


def test_evaluate_can_decode_rationales_for_inspection_and_cap_examples():
    settings = EvalSettings(
        dataset="synthetic",
        method="step_by_step",
        batch_size=8,
        max_input_length=64,
        max_decode_length=32,
        decode_rationales=True,
        max_examples=5,
    )
    result = evaluate(
        _examples(12),
        split="test",
        step=1,
        settings=settings,
        codec=_codec(),
        generate=_EchoDecoder(),
    )
    assert len(result.records) == 5
    assert result.records[1].rationale == "explain: 1+1"
    # synthetic labels are scored by value: "0+1" vs "wrong" is wrong, "1+1" == "1+1" right.
    assert result.report.equation_accuracy == pytest.approx(3 / 5)


def test_long_inputs_are_truncated_keeping_the_final_eos_and_outputs_stop_at_eos():
    assert encode_inputs(["abcdef"], lambda t: [ord(c) for c in t], 4) == [[97, 98, 99, 1]]
    assert strip_output([5, 0, 6, 1, 7, 0]) == [5, 6]
    assert padded_length([3, 70], 1024) == 128
    assert padded_length([3, 70], 100) == 100


def test_rationales_are_decoded_to_their_own_length_not_the_labels():
    settings = EvalSettings(
        dataset="cqa",
        method="step_by_step",
        batch_size=4,
        max_input_length=64,
        max_decode_length=3,  # labels are short
        decode_rationales=True,
        rationale_max_decode_length=32,  # rationales were trained at the target length
    )
    decoder = _EchoDecoder()
    result = evaluate(
        _examples(4), split="valid", step=1, settings=settings, codec=_codec(), generate=decoder
    )
    assert decoder.decode_lengths == [3, 32]
    assert result.records[1].prediction == "1+1"
    assert result.records[1].rationale == "explain: 1+1"  # 12 tokens: more than the label's 3


def test_an_evaluation_asked_to_stop_raises_between_batches_and_scores_nothing():
    settings = EvalSettings(
        dataset="cqa", method="standard", batch_size=2, max_input_length=64, max_decode_length=8
    )
    decoder = _EchoDecoder()
    answers = iter([False, False, True])
    with pytest.raises(EvaluationInterrupted):
        evaluate(
            _examples(10),
            split="valid",
            step=1,
            settings=settings,
            codec=_codec(),
            generate=decoder,
            should_stop=lambda: next(answers),
        )
    assert len(decoder.shapes) == 2  # asked before each batch; the third was never decoded
