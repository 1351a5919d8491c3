"""Efficiency report on a fixture student: size, latency, throughput and memory are measured
(present and positive), written to efficiency.json and read back; and the end-of-run hook
writes both reports of a run directory."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from sbsd_jax.data.examples import Example
from sbsd_jax.eval import efficiency, run_reports
from sbsd_jax.eval.evaluator import EvalResult, TextCodec, encode_inputs
from sbsd_jax.eval.metrics import score
from sbsd_jax.eval.predictions import PredictionRecord
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.model.config import get_model_config
from sbsd_jax.model.decode import compiled_decode_bytes, greedy_decode
from sbsd_jax.model.t5 import T5
from sbsd_jax.settings import from_config
from sbsd_jax.train import loop
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train.step import build_train_program

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
CODEC = TextCodec(
    encode=lambda text: [b + 3 for b in text.encode()],
    decode=lambda ids: bytes(max(i - 3, 0) for i in ids).decode(errors="replace"),
    label_input=lambda example: "predict: " + example.input,
)
EXAMPLES = [
    Example(f"ex{i}", f"Ann has {i} shells. She buys 2 more.", str(i + 2), f"{i} + 2 = {i + 2}.")
    for i in range(5)
]


TINY = {"vocab_size": 300, "num_encoder_layers": 1, "num_decoder_layers": 1}


def tiny_model() -> T5:
    return T5(get_model_config("t5_v1_1_tiny", **TINY), rngs=nnx.Rngs(0))


def test_measured_latency_throughput_and_memory_are_positive_and_round_trip(tmp_path):
    model = tiny_model()
    graphdef, state = nnx.split(model)
    generate = lambda tokens, length: greedy_decode(
        graphdef, tokens, state=state, max_decode_length=length
    )
    rows = encode_inputs([CODEC.label_input(e) for e in EXAMPLES], CODEC.encode, 128)
    report = efficiency.measure(
        generate,
        rows,
        parameters=run_reports.parameter_count(state),
        compute_dtype="float32",
        max_input_length=128,
        max_decode_length=6,
        batch_size=8,
        latency_examples=2,
        repeats=2,
        compiled_bytes=lambda tokens: compiled_decode_bytes(
            graphdef, state, tokens, max_decode_length=6
        ),
    )
    assert report.parameters == sum(x.size for x in jax.tree.leaves(state)) > 0
    assert report.latency_examples == 2 and report.latency_seconds_per_example > 0
    assert report.throughput_batch_size == 8 and report.throughput_examples_per_second > 0
    assert report.input_length == 64  # longest input (44 + EOS) rounded up, as evaluation pads
    # The compiled decode holds at least the float32 parameters.
    assert report.compiled_decode_bytes >= 4 * report.parameters
    assert report.device.startswith(jax.devices()[0].platform)
    if jax.devices()[0].platform == "cpu":
        assert (
            report.device_peak_bytes is None and "no memory statistics" in report.device_peak_note
        )
    path = efficiency.write_report(tmp_path, report)
    assert efficiency.read_report(path) == report
    text = "\n".join(report.summary_lines())
    assert "ms per example at batch 1," in text and "examples/s at batch 8" in text


def test_end_of_run_hook_writes_efficiency_and_reasoning_reports(tmp_path):
    config = load_config_file(CONFIGS / "base.py")
    config.model = "t5_v1_1_tiny"
    config.model_overrides.update(TINY)
    config.mesh.update(data=1, fsdp=1, tensor=1)
    config.update(dataset="synthetic", eval_batch_size=4, max_input_length=64)
    config.eval_max_decode_length = 5
    spec = from_config.to_run_spec(config)
    mesh = mesh_lib.make_mesh(spec.mesh, jax.devices()[:1])
    program = build_train_program(spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules)
    params = program.init_fn(jax.random.key(0)).params

    generate = loop._make_generate(program, params)  # what the trainer passes

    records = [
        PredictionRecord(e.id, e.input, e.label, e.label if i else "0", bool(i), f"{i} + 2 = 4.")
        for i, e in enumerate(EXAMPLES)
    ]
    results = {
        "test": EvalResult(
            "test",
            3,
            score("synthetic", [r.prediction for r in records], [r.label for r in records]),
            records,
            0.1,
        )
    }
    lines = run_reports.for_training_run(
        loop._eval_settings(spec, full=True),
        spec.evaluation.splits,
        program,
        params,
        {"test": EXAMPLES},
        CODEC,
        results,
        generate,
        str(tmp_path),
    )
    saved = json.loads((tmp_path / "efficiency.json").read_text())
    assert saved["throughput_batch_size"] == 4 and saved["latency_seconds_per_example"] > 0
    assert saved["compiled_decode_bytes"] > 0
    reasoning_json = json.loads((tmp_path / "reasoning.json").read_text())
    assert reasoning_json["test"]["equations_checked"] == 5
    assert reasoning_json["test"]["arithmetic_error_rate"] == 0.8  # only 2 + 2 = 4 is right
    markdown = (tmp_path / "reasoning_test.md").read_text()
    assert "0 + 2 = 2." in markdown and "0 + 2 = 4." in markdown  # teacher and student
    text = "\n".join(lines)
    assert "examples/s at batch 4" in text and "reasoning_test.md" in text


def run_report_command(workdir: pathlib.Path):
    """`python -m sbsd_jax.eval.report --workdir=...` in a process of its own (importing the
    entry point defines flags that the demo, in the same test worker, defines too)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sbsd_jax.eval.report", f"--workdir={workdir}"],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_report_command_names_the_missing_run_file_without_a_traceback(tmp_path):
    result = run_report_command(tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"sbsd_jax.eval.report: {tmp_path}/config.json: not found; --workdir must be a run "
        "directory of sbsd_jax.main"
    )


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"{", "invalid JSON"), (b"\xff\xfe{}", "invalid JSON"), (b"[]", "not a JSON object")],
    ids=["torn", "not UTF-8", "a list"],
)
def test_a_damaged_run_config_is_named_in_one_line(tmp_path, content, words):
    (tmp_path / "config.json").write_bytes(content)
    result = run_report_command(tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"sbsd_jax.eval.report: {tmp_path}/config.json: {words}"
    ), result.stderr


def test_latency_batch_is_the_rows_a_mesh_splits_a_batch_into_and_no_eval_no_report():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    assert run_reports.smallest_batch(NamedSharding(mesh, PartitionSpec(("data", "fsdp")))) == 4
    assert run_reports.smallest_batch(NamedSharding(mesh, PartitionSpec("data"))) == 2
    assert run_reports.smallest_batch(NamedSharding(mesh, PartitionSpec())) == 1
    assert run_reports.efficiency_split(("valid", "test")) == "test"
    assert run_reports.efficiency_split(("valid",)) == "valid"
    assert run_reports.efficiency_split(()) is None


def test_right_padded_prompts_get_segment_ids_up_to_their_last_token():
    tokens = np.array([[5, 0, 7, 0, 0], [4, 4, 4, 4, 4], [0, 0, 0, 0, 0]], np.int32)
    # An inner 0 is a token of the prompt; the trailing ones are padding; a pad row keeps one
    # slot so that it decodes like the others.
    np.testing.assert_array_equal(
        run_reports.right_padded_segments(tokens),
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]],
    )
