"""Ahead-of-time compilation of the real train step for a TPU slice, on this CPU machine.

The compile test needs libtpu (`pip install "jax[tpu]==<jax version>"`) and is skipped without
it; the memory arithmetic and batch shapes are checked everywhere."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import ml_collections
import pytest

from sbsd_jax import aot
from sbsd_jax.settings import from_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
GIB = 1024**3
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def tiny_config() -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("cqa_config", CONFIGS / "cqa.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = "t5_v1_1_tiny"
    config.model_overrides.update(
        {"dropout_rate": 0.0, "vocab_size": 512, "num_encoder_layers": 1, "num_decoder_layers": 1}
    )
    config.batch_size, config.eval_batch_size = 4, 4
    config.max_input_length, config.max_target_length = 32, 16
    config.mesh.update(data=1, fsdp=2, tensor=2)
    return config


def test_memory_total_counts_outputs_aliased_to_donated_inputs_once():
    report = aot.MemoryReport(
        argument_bytes=10 * GIB,
        output_bytes=9 * GIB,
        alias_bytes=9 * GIB,
        temp_bytes=4 * GIB,
        generated_code_bytes=0,
        hbm_bytes=16 * GIB,
    )
    assert report.total_bytes == 14 * GIB
    assert report.fits
    assert "fits (88% used)" in report.table()
    over = aot.MemoryReport(20 * GIB, 0, 0, 13 * GIB, 0, 32 * GIB)
    assert not over.fits and "DOES NOT FIT" in over.table()


@pytest.mark.parametrize(
    "device_kind, topology, gib",
    [
        ("TPU v4", "v4:2x2x4", 32),
        ("TPU v5 lite", "v5e:2x4", 16),
        ("TPU v5", "v5p:2x2x2", 95),
        ("TPU v6 lite", "v6e:2x2", 32),
        ("TPU v9", "v6e:4x4", 32),
        ("TPU v9", "v9:1x1", None),
    ],
)
def test_hbm_per_chip_by_device_kind_or_topology_name(device_kind, topology, gib):
    expected = None if gib is None else gib * GIB
    assert aot.hbm_bytes_for(device_kind, topology) == expected


def test_abstract_batch_has_two_sequences_per_example_for_step_by_step():
    config = tiny_config()
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    batching = from_config.batching_spec(config)
    batch = aot.abstract_batch(config.method, batching, sharding)
    assert batch["encoder_input_tokens"].shape == (8, 32)
    assert batch["decoder_task_ids"].shape == (8, 16)
    assert batch["decoder_loss_weights"].dtype == jax.numpy.float32
    standard = aot.abstract_batch("standard", batching, sharding)
    assert standard["decoder_target_tokens"].shape == (4, 16)


@pytest.mark.skipif(not HAS_LIBTPU, reason='needs libtpu: pip install "jax[tpu]==<jax version>"')
def test_tiny_train_step_compiles_for_a_v5e_2x2_slice_and_reports_its_memory():
    devices = aot.topology_devices("v5e:2x2")
    assert len(devices) == 4 and devices[0].platform == "tpu"
    spec = from_config.run_spec(tiny_config(), check_data=False)
    compiled, program = aot.compile_train_step(spec, devices)
    assert dict(program.mesh.shape) == {"data": 1, "fsdp": 2, "tensor": 2}
    assert program.model_config.dtype == "bfloat16"  # 'auto' follows the target, not this CPU
    report = aot.memory_report(compiled, aot.hbm_bytes_for(devices[0].device_kind))
    assert report.hbm_bytes == 16 * GIB
    assert 0 < report.argument_bytes < report.total_bytes
    assert report.alias_bytes > 0  # the donated state is updated in place
    assert report.fits


def tiny_decoder_config(base_qtype: str) -> ml_collections.ConfigDict:
    """The Qwen2.5 step-by-step recipe at a tiny size; QLoRA when base_qtype is not 'none'."""
    spec = importlib.util.spec_from_file_location("qwen", CONFIGS / "qwen2_5_0_5b_step_by_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model, config.init_checkpoint, config.vocabulary = "qwen2_5_tiny", "", "byte"
    config.model_overrides.vocab_size = 512
    config.batch_size, config.eval_batch_size = 8, 8  # the recipe's 4 micro-batches, 2 rows each
    config.max_input_length, config.max_target_length, config.decoder_row_length = 32, 16, 48
    config.mesh.update(data=1, fsdp=2, tensor=2)
    config.lora.enabled = base_qtype != "none"
    config.lora.base_qtype = base_qtype
    return config


@pytest.mark.skipif(not HAS_LIBTPU, reason='needs libtpu: pip install "jax[tpu]==<jax version>"')
def test_a_decoder_only_student_compiles_for_a_v5e_2x2_slice_with_and_without_qlora():
    devices = aot.topology_devices("v5e:2x2")
    reports, programs = {}, {}
    for base_qtype in ("none", "nf4"):
        spec = from_config.run_spec(tiny_decoder_config(base_qtype), check_data=False)
        compiled, programs[base_qtype] = aot.compile_train_step(spec, devices)
        reports[base_qtype] = aot.memory_report(compiled, aot.hbm_bytes_for("TPU v5 lite"))
        assert reports[base_qtype].fits
        cost = aot.step_cost(
            compiled, spec, programs[base_qtype].model_config, 4, aot.CHIP_PEAKS["v5e"]
        )
        assert cost.model_flops > 0 and cost.bound_seconds > 0
    full, qlora = programs["none"], programs["nf4"]
    assert full.frozen is None and qlora.frozen is not None  # the 4-bit base: its own argument
    trained = sum(x.size for x in jax.tree.leaves(qlora.abstract_state.params))
    assert trained < sum(x.size for x in jax.tree.leaves(full.abstract_state.params)) / 4
    # Adapters and their Adam moments in place of every weight's: fewer argument bytes.
    assert reports["nf4"].argument_bytes < reports["none"].argument_bytes


def test_an_unknown_config_field_is_named_like_the_trainer_does():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "sbsd_jax.aot", f"--config={CONFIGS / 'cqa.py'}", "--config.foo=1"],
        cwd=CONFIGS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "sbsd_jax.aot: unknown config field 'foo' in --config.foo=1" in result.stderr


def test_a_topology_libtpu_cannot_describe_is_one_line_naming_the_flag():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "sbsd_jax.aot", f"--config={CONFIGS / 'cqa.py'}"]
        + ["--topology=v9x-3"],
        cwd=CONFIGS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    ours = [line for line in result.stderr.splitlines() if "v9x-3" in line]
    assert len(ours) == 1 and ours[0].startswith("sbsd_jax.aot: --topology=v9x-3: "), ours


@pytest.mark.skipif(not HAS_LIBTPU, reason="needs libtpu for the topology's devices")
@pytest.mark.parametrize(
    "topology, layout",
    [("v4:2x2x4", (2, 2, 4)), ("v5e:4x4", (1, 8, 2)), ("v5e:4x4", (2, 2, 4))],
)
def test_a_mesh_axis_that_cuts_across_the_torus_still_builds(topology, layout):
    """JAX refuses these layouts unless physical axes may be split; the mesh falls back to it."""
    from sbsd_jax.settings.spec import MeshSpec
    from sbsd_jax.train import mesh as mesh_lib

    spec = MeshSpec(data=layout[0], fsdp=layout[1], tensor=layout[2], dcn_data=1, rules=())
    devices = aot.topology_devices(topology)
    mesh = mesh_lib.make_mesh(spec, devices)
    assert tuple(mesh.shape.values()) == layout
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)
