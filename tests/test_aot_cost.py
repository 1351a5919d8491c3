"""Step cost on paper: the FLOP formula by hand, XLA's count of a compiled step next to it,
the roofline bound and MFU arithmetic, and which chip's peaks a device kind gets."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import pytest

from sbsd_jax import aot
from sbsd_jax.model import flops
from sbsd_jax.model.config import get_model_config
from sbsd_jax.settings import from_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_train_flops_formula_equals_a_hand_count():
    # v1.1 (3 MLP kernels), d_model 4, 1 head of 2, d_ff 8, 1+1 layers, vocabulary 10.
    config = get_model_config(
        "t5_v1_1_tiny",
        d_model=4,
        num_heads=1,
        d_kv=2,
        d_ff=8,
        num_encoder_layers=1,
        num_decoder_layers=1,
        vocab_size=10,
    )
    source, target = 3, 2
    encoder_token = 2 * (4 * 4 * 2 + 3 * 4 * 8) + 4 * source * 2  # projections, q.k + w.v
    cross_kv = 2 * 2 * 4 * 2
    decoder_token = 2 * (6 * 4 * 2 + 3 * 4 * 8) + 4 * (target + source) * 2 + 2 * 4 * 10
    forward = source * (encoder_token + cross_kv) + target * decoder_token
    assert flops.forward_flops(config, 1, source, target) == forward
    assert flops.train_step_flops(config, 5, source, target) == 3 * 5 * forward
    # Decoding: the encoder once, then one token per step over a growing prefix.
    steps = sum(
        2 * (6 * 4 * 2 + 3 * 4 * 8) + 4 * (t + 1 + source) * 2 + 2 * 4 * 10 for t in range(4)
    )
    assert flops.decode_flops(config, 2, source, 4) == 2 * (
        source * (encoder_token + cross_kv) + steps
    )


def test_roofline_bound_examples_per_second_and_mfu():
    peak = aot.ChipPeak(bf16_tflops=100.0, hbm_gb_per_s=1000.0)
    cost = aot.StepCost(
        model_flops=8e12, xla_flops=2.5e12, xla_bytes=10e9, chips=4, examples_per_step=64, peak=peak
    )
    assert cost.compute_seconds == pytest.approx(0.025)
    assert cost.memory_seconds == pytest.approx(0.010)
    assert cost.bound_seconds == pytest.approx(0.025)  # compute bound
    assert cost.examples_per_second_per_chip == pytest.approx(16 / 0.025)
    assert cost.mfu(cost.bound_seconds) == pytest.approx(0.8)  # 2e12 of 2.5e12 per chip
    assert cost.mfu(0.05) == pytest.approx(0.4)
    text = cost.table(measured_step_seconds=0.05)
    assert "compute bound" in text and "MFU at most 80%" in text and "MFU 40.0%" in text
    assert not cost.xla_undercounts
    # A scanned program: XLA counted one layer; the compute bound falls back on the formula.
    scanned = aot.StepCost(8e12, 0.1e12, 1e9, chips=4, examples_per_step=64, peak=peak)
    assert scanned.xla_undercounts and scanned.compute_seconds == pytest.approx(0.02)
    assert "counts a loop body" in scanned.table()
    memory_bound = aot.StepCost(1e12, 1e12, 100e9, 1, 8, peak)
    assert memory_bound.bound_seconds == pytest.approx(0.1)
    assert "HBM bandwidth bound" in memory_bound.table()


@pytest.mark.parametrize(
    "kind, topology, chip",
    [
        ("TPU v4", "v4:2x2x4", "v4"),
        ("TPU v5 lite", "v5e:2x4", "v5e"),
        ("TPU v5", "v5p:2x2x2", "v5p"),
        ("TPU v6 lite", "v6e:2x2", "v6e"),
        ("NVIDIA H100 80GB HBM3", "", "h100"),
        ("NVIDIA H200", "", "h200"),
        ("TPU v9", "v6e:4x4", "v6e"),
        ("cpu", "", None),
    ],
)
def test_chip_peaks_by_device_kind_or_topology(kind, topology, chip):
    assert aot.chip_for(kind, topology) == chip


def test_compiled_step_cost_sits_next_to_the_formula():
    spec = importlib.util.spec_from_file_location("cqa_config", CONFIGS / "cqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = "t5_v1_1_tiny"
    config.model_overrides.update(
        {"dropout_rate": 0.0, "vocab_size": 256, "num_encoder_layers": 1, "num_decoder_layers": 1}
    )
    config.batch_size, config.eval_batch_size = 2, 2
    config.max_input_length, config.max_target_length = 32, 16
    config.mesh.update(data=1, fsdp=1, tensor=1)
    run = from_config.run_spec(config, check_data=False)
    compiled, program = aot.compile_train_step(run, jax.devices()[:1])
    cost = aot.step_cost(compiled, run, program.model_config, 1, aot.CHIP_PEAKS["v5e"])
    assert cost.model_flops == flops.train_step_flops(program.model_config, 4, 32, 16)
    # XLA counts the same matmuls plus element-wise work, optimizer and loss.
    assert 0.9 * cost.model_flops < cost.xla_flops < 3 * cost.model_flops
    assert cost.xla_bytes > 4 * sum(x.size for x in jax.tree.leaves(program.abstract_state.params))
    assert cost.bound_seconds > 0 and cost.examples_per_second_per_chip > 0
