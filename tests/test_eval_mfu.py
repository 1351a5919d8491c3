"""Measured MFU of a training run: the arithmetic, which peak a device gets, the step time read
from metrics.jsonl, and the run-directory report (mfu.json and the summary lines)."""

from __future__ import annotations

import json
import types

import jax
import pytest

from sbsd_jax.eval import mfu, run_reports
from sbsd_jax.model import flops
from sbsd_jax.model.config import get_model_config

TINY = get_model_config("t5_v1_1_tiny", vocab_size=300, num_encoder_layers=1, num_decoder_layers=1)
RUN = mfu.TrainStepShape(
    method="step_by_step",
    batch_size=8,
    max_input_length=64,
    max_target_length=16,
)


def test_mfu_is_model_flops_over_what_the_chips_could_do_in_the_step():
    assert flops.mfu(8e12, step_seconds=0.05, chips=4, peak_flops_per_chip=100e12) == 0.4
    with pytest.raises(ValueError, match="positive"):
        flops.mfu(1.0, step_seconds=0.0, chips=1, peak_flops_per_chip=1.0)
    # step_by_step: a predict and an explain sequence per example of the global batch
    # (gradient accumulation splits those rows into micro-batches; it adds none).
    assert flops.train_step_rows("step_by_step", 8) == 16
    assert flops.train_step_rows("standard", 8) == 8


def test_step_time_is_the_median_of_the_windows_that_log_one():
    rows = [
        {"step": 50, "train_loss": 2.0},  # the compiling window logs no step time
        {"step": 100, mfu.STEP_SECONDS_METRIC: 0.30},
        {"step": 150, mfu.STEP_SECONDS_METRIC: 0.10},
        {"step": 150, "test_accuracy": 0.5},
        {"step": 200, mfu.STEP_SECONDS_METRIC: 0.20},
        {"step": 250, mfu.STEP_SECONDS_METRIC: 0.0},  # not a time
    ]
    assert mfu.median_step_seconds(rows) == (0.20, 3)
    assert mfu.median_step_seconds(rows[:1]) is None


def test_published_peak_for_a_listed_chip_and_a_measured_one_for_a_cpu():
    tpu = types.SimpleNamespace(platform="tpu", device_kind="TPU v5 lite")
    assert mfu.device_peak(tpu, "bfloat16") == mfu.PeakFlops(
        197e12, "published bf16 dense peak of v5e"
    )
    assert mfu.device_peak(tpu, "bfloat16", chip="v4").flops_per_second == 275e12
    cpu = mfu.device_peak(jax.devices("cpu")[0], "float32")
    assert cpu.flops_per_second > 1e9 and "measured" in cpu.source


def test_measured_mfu_of_a_run_from_its_config_and_step_times():
    rows = [{"step": 10, mfu.STEP_SECONDS_METRIC: 0.5}, {"step": 20, mfu.STEP_SECONDS_METRIC: 0.5}]
    peak = mfu.PeakFlops(1e12, "test peak")
    report = mfu.measure(RUN, TINY, rows, chips=2, device="tpu:TPU v4", peak=peak)
    expected_flops = flops.train_step_flops(TINY, 16, 64, 16)
    assert report.model_flops == expected_flops and report.examples_per_step == 8
    assert report.mfu == pytest.approx(expected_flops / (0.5 * 2 * 1e12))
    table = report.table()
    assert f"MFU {100 * report.mfu:.1f}%" in table and "8.0 examples/s per chip" in table
    assert "median of 2 log windows" in table and "test peak" in table
    assert mfu.measure(RUN, TINY, [{"step": 1}], chips=1, device="cpu", peak=peak) is None


def test_run_directory_report_writes_mfu_json_only_when_step_times_are_logged(tmp_path):
    device = jax.devices("cpu")[0]
    lines = run_reports.training_mfu_lines(RUN, TINY, str(tmp_path), chips=1, device=device)
    assert lines == [f"measured MFU: n/a ({tmp_path}/metrics.jsonl logs no train_step_seconds)"]
    assert not (tmp_path / mfu.MFU_FILE).exists()

    rows = [{"step": 5, mfu.STEP_SECONDS_METRIC: 0.25}, {"step": 10, "train_loss": 1.0}]
    text = "".join(json.dumps(row) + "\n" for row in rows) + '{"step": 15, "train_'  # crashed
    (tmp_path / "metrics.jsonl").write_text(text)
    lines = run_reports.training_mfu_lines(
        RUN, TINY, str(tmp_path), chips=8, device=device, chip="v5e"
    )
    saved = json.loads((tmp_path / mfu.MFU_FILE).read_text())
    assert saved["chips"] == 8 and saved["step_seconds"] == 0.25 and saved["device"] == "v5e"
    assert saved["mfu"] == pytest.approx(
        flops.train_step_flops(TINY, 16, 64, 16) / 0.25 / 8e12 / 197
    )
    assert lines[0] == f"measured MFU of training: {100 * saved['mfu']:.1f}%"
    assert "published bf16 dense peak of v5e" in lines[1]


@pytest.mark.parametrize("name", ["qwen2_5_0_5b", "llama_3_2_1b", "gemma_2_2b", "phi_3_mini_4k"])
def test_a_decoder_only_token_costs_two_flops_per_matmul_weight_plus_attention(name):
    """The formula against the model itself: every kernel weight (not biases or norm scales,
    not the embedding lookup; the head reuses the table when tied) is one multiply-add per
    token."""
    from flax import nnx

    from sbsd_jax.model.decoder_only.config import get_decoder_config
    from sbsd_jax.model.decoder_only.transformer import DecoderOnlyLM

    config = get_decoder_config(name)
    model = nnx.eval_shape(lambda: DecoderOnlyLM(config, rngs=nnx.Rngs(0)))
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
    matmul_weights = sum(
        leaf.size
        for path, leaf in leaves
        if leaf.ndim >= 2 and not any("bias" in str(key) for key in path)
    )
    if not config.tie_word_embeddings:
        matmul_weights -= config.vocab_size * config.d_model
    length = 512
    attention = 4 * length * config.num_heads * config.head_dim * config.num_layers
    per_token = flops.causal_lm_flops_per_token(config, length)
    assert per_token == 2 * matmul_weights + attention
    shape = mfu.TrainStepShape("step_by_step", 4, 0, 0, row_length=length)
    assert shape.model_flops(config) == 3 * (2 * 4) * length * per_token  # predict + explain
