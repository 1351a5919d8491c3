"""The decoder-only recipes (configs/phi3_mini_cot_qlora.py, configs/qwen2_5_0_5b_step_by_step.py)
validate and build their real train program abstractly (jax.eval_shape: nothing downloaded,
nothing allocated), with the published sizes and the adapters LoRA adds."""

from __future__ import annotations

import tempfile

import jax
import numpy as np
import pytest
from tiny_run import REPO

from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.model import lora
from sbsd_jax.settings import from_config
from sbsd_jax.settings.validation import validate
from sbsd_jax.train import mesh as mesh_lib
from sbsd_jax.train import step as step_lib


def recipe(name):
    config = load_config_file(str(REPO / "configs" / f"{name}.py"))
    config.data_dir = tempfile.gettempdir()  # validation checks only that the folder exists
    return config


def abstract_program(config):
    spec = from_config.run_spec(config, check_data=False)
    spec.check_devices(8)
    mesh = mesh_lib.make_mesh(spec.mesh, jax.devices())
    program = step_lib.build_train_program(
        spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules, platform="tpu"
    )
    return spec, program


def size(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_the_phi3_seed_recipe_is_qlora_r8_on_nf4_with_1024_token_cot_rows():
    config = recipe("phi3_mini_cot_qlora")
    validate(config, 8)  # data fields included: the hub id is the vocabulary, fetched at start
    spec, program = abstract_program(config)
    assert (spec.data.method, spec.causal.template, spec.causal.row_length) == (
        "cot",
        "plain",
        1024,
    )
    assert spec.model.lora == lora.LoraSpec(rank=8, alpha=16.0, base_qtype="nf4", tile_size=64)
    assert spec.model.init_checkpoint == "microsoft/Phi-3-mini-4k-instruct"
    assert (program.model_config.remat_policy, program.model_config.dtype) == ("full", "bfloat16")
    # Rank 8 on q, k, v, o (3072 -> 3072) and gate, up (3072 -> 8192), down (8192 -> 3072) of
    # the 32 layers: r * (in + out) each.
    per_layer = 4 * 8 * (3072 + 3072) + 3 * 8 * (3072 + 8192)
    assert size(program.abstract_state.params) == 32 * per_layer == 14_942_208
    moments = [x for x in jax.tree.leaves(program.abstract_state.opt_state) if x.ndim > 0]
    assert size(moments) == 2 * 32 * per_layer  # Adam's mu and nu of the adapters only
    # The frozen base: the 3.82B parameters (plus one scale per 64 inputs), the adapted
    # kernels held as 4-bit NF4 codes, so the base takes about a third of its bf16 bytes.
    frozen = jax.tree.leaves(program.frozen.abstract)
    assert 3.82e9 < size(frozen) < 3.82e9 * (1 + 1 / 64) + 1e6
    codes = sum(int(np.prod(x.shape)) for x in frozen if x.dtype == jax.numpy.uint4)
    assert codes == 32 * (4 * 3072 * 3072 + 3 * 3072 * 8192)  # every adapted kernel
    frozen_bytes = codes / 2 + 4 * (size(frozen) - codes)  # the rest: float32
    assert frozen_bytes < 0.4 * 2 * 3.82e9  # against the bf16 base


def test_the_qwen_step_by_step_recipe_trains_every_parameter_of_a_qwen2_5_0_5b():
    config = recipe("qwen2_5_0_5b_step_by_step")
    validate(config, 8)
    spec, program = abstract_program(config)
    assert spec.model.lora is None and program.frozen is None
    assert (spec.data.method, spec.causal.template, spec.batching.row_length) == (
        "step_by_step",
        "auto",
        768,
    )
    assert 0.49e9 < size(program.abstract_state.params) < 0.50e9  # 494M, tied embeddings
    assert spec.model.init_checkpoint == "Qwen/Qwen2.5-0.5B"
    # what makes it fit a v5e-8 (the AOT check in the recipe's comment)
    assert (spec.step.grad_accum_steps, spec.model.remat_policy, spec.model.scan_layers) == (
        4,
        "full",
        True,
    )


@pytest.mark.parametrize("name", ["phi3_mini_cot_qlora", "qwen2_5_0_5b_step_by_step"])
def test_a_recipe_with_a_missing_tokenizer_folder_is_named(name, tmp_path):
    config = recipe(name)
    config.vocabulary = str(tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="config.vocabulary=.*Hugging Face tokenizer"):
        validate(config, 8)
