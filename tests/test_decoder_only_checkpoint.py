"""Hugging Face checkpoints of every decoder-only architecture import and export exactly, and
damaged or mismatched ones fail with an error that names the tensor, file or field."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import safetensors.numpy
from decoder_only_hf import ARCHITECTURES, VOCAB, save_hf_model

from sbsd_jax.model.decoder_only.config import get_decoder_config
from sbsd_jax.model.decoder_only.hf_checkpoint import (
    load_hf_decoder,
    params_from_state,
    read_tensors,
    save_hf_decoder,
    tokenizer_files_in,
)
from sbsd_jax.model.decoder_only.hf_config import config_from_hf
from sbsd_jax.model.hf_checkpoint import CheckpointError

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """architecture -> (folder written by save_pretrained, the transformers model)."""
    root = tmp_path_factory.mktemp("hf")
    return {arch: (root / arch, save_hf_model(arch, root / arch)) for arch in ARCHITECTURES}


def _logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(input_ids=torch.tensor(tokens)).logits.numpy()


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_hf_to_ours_to_hf_is_bit_exact_and_loads_in_transformers(arch, saved, tmp_path):
    source, hf = saved[arch]
    config, state = load_hf_decoder(source)
    assert config.architecture == arch
    save_hf_decoder(state, config, tmp_path)
    _assert_same_tensors(read_tensors(source), read_tensors(tmp_path))
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    tokens = np.random.default_rng(0).integers(3, VOCAB, (2, 12))
    np.testing.assert_array_equal(_logits(reloaded.eval(), tokens), _logits(hf, tokens))


def test_scanned_layout_round_trips_and_phi3_shards_re_fuse(saved, tmp_path):
    """Phi-3's fused qkv / gate_up split into our kernels and re-fuse; a scanned (stacked)
    model exports the same tensors; a sharded export has an index transformers reads."""
    source, hf = saved["phi3"]
    config, state = load_hf_decoder(source, scan_layers=True)
    assert state["layers"]["attention"]["query"].shape[0] == config.num_layers
    (source / "tokenizer.json").write_text("{}")
    save_hf_decoder(
        state,
        config,
        tmp_path,
        max_shard_bytes=20_000,
        tokenizer_files=tokenizer_files_in(source),
    )
    assert (tmp_path / "tokenizer.json").read_text() == "{}"
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    _assert_same_tensors(read_tensors(source), read_tensors(tmp_path))
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tokens = np.random.default_rng(0).integers(3, VOCAB, (1, 12))
    np.testing.assert_array_equal(_logits(reloaded, tokens), _logits(hf, tokens))
    again_config, again = load_hf_decoder(tmp_path)
    ours, back = params_from_state(state, config), params_from_state(again, again_config)
    assert sorted(ours) == sorted(back)
    assert all(np.array_equal(ours[path], back[path]) for path in ours)


def test_bfloat16_checkpoint_round_trips_bit_exact(saved, tmp_path):
    source, hf = saved["gemma3"]
    bf16 = tmp_path / "bf16"
    hf.to(torch.bfloat16).save_pretrained(bf16)
    hf.to(torch.float32)
    config, state = load_hf_decoder(bf16)
    save_hf_decoder(state, config, tmp_path / "out", dtype="bfloat16")
    _assert_same_tensors(read_tensors(bf16), read_tensors(tmp_path / "out"))


# ----------------------------------------------------------------------------- damage


def _copy(saved, arch: str, tmp_path):
    target = tmp_path / arch
    shutil.copytree(saved[arch][0], target)
    return target


def _edit_tensors(folder, edit) -> None:
    path = folder / "model.safetensors"
    tensors = dict(safetensors.numpy.load_file(str(path)))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})


def _edit_config(folder, edit) -> None:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def _shard(folder, names_in_second: set[str], drop_second: bool = False) -> None:
    """Rewrites model.safetensors as two shards and an index."""
    tensors = dict(safetensors.numpy.load_file(str(folder / "model.safetensors")))
    (folder / "model.safetensors").unlink()
    first = {k: v for k, v in tensors.items() if k not in names_in_second}
    safetensors.numpy.save_file(first, str(folder / "a.safetensors"))
    if not drop_second:
        second = {k: v for k, v in tensors.items() if k in names_in_second}
        safetensors.numpy.save_file(second, str(folder / "b.safetensors"))
    weight_map = {
        k: ("b.safetensors" if k in names_in_second else "a.safetensors") for k in tensors
    }
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


UP = "model.layers.1.mlp.up_proj.weight"
DAMAGE = {
    "missing tensor": (
        "llama",
        lambda f: _edit_tensors(f, lambda t: t.pop(UP)),
        f"missing tensor '{UP}'",
    ),
    "wrong shape": (
        "llama",
        lambda f: _edit_tensors(
            f, lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((8, 32))})
        ),
        r"tensor 'model.layers.0.self_attn.k_proj.weight' has shape \(8, 32\)",
    ),
    "unexpected tensor": (
        "qwen3",
        lambda f: _edit_tensors(
            f, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": t[UP]})
        ),
        "unexpected tensor.*'model.layers.2.mlp.up_proj.weight'",
    ),
    "phi3 fused qkv rows": (
        "phi3",
        lambda f: _edit_tensors(
            f,
            lambda t: t.update(
                {"model.layers.0.self_attn.qkv_proj.weight": np.zeros((32, 32), np.float32)}
            ),
        ),
        r"'model.layers.0.self_attn.qkv_proj.weight' has shape \(32, 32\).*needs \(64, 32\)",
    ),
    "untied lm_head under tied config": (
        "qwen2",
        lambda f: _edit_tensors(
            f, lambda t: t.update({"lm_head.weight": np.ones((VOCAB, 32), np.float32)})
        ),
        "'lm_head.weight' differs from 'model.embed_tokens.weight'",
    ),
    "truncated file": (
        "gemma2",
        lambda f: (f / "model.safetensors").write_bytes(
            (f / "model.safetensors").read_bytes()[:100]
        ),
        "model.safetensors: not a readable safetensors file",
    ),
    "missing shard": (
        "llama",
        lambda f: _shard(f, {UP}, drop_second=True),
        "b.safetensors: missing checkpoint file",
    ),
    "tensor not in its shard": (
        "llama",
        lambda f: (_shard(f, {UP}), safetensors.numpy.save_file({}, str(f / "b.safetensors"))),
        f"tensor '{UP}' is not in shard b.safetensors",
    ),
    "missing field": (
        "gemma3",
        lambda f: _edit_config(f, lambda c: c.pop("hidden_size")),
        "config.json: missing field 'hidden_size'",
    ),
    "unsupported rope": (
        "llama",
        lambda f: _edit_config(f, lambda c: c["rope_parameters"].update(rope_type="yarn")),
        "rope_parameters.rope_type='yarn' is not supported",
    ),
    "rope field missing": (
        "llama",
        lambda f: _edit_config(f, lambda c: c["rope_parameters"].pop("low_freq_factor")),
        "rope_parameters.low_freq_factor is missing",
    ),
    "other model type": (
        "qwen2",
        lambda f: _edit_config(f, lambda c: c.update(model_type="gpt2")),
        "model_type='gpt2' is not a supported decoder-only model",
    ),
    "inconsistent heads": (
        "qwen2",
        lambda f: _edit_config(f, lambda c: c.update(num_key_value_heads=3)),
        r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)",
    ),
    "config shape disagrees with tensors": (
        "gemma2",
        lambda f: _edit_config(f, lambda c: c.update(intermediate_size=40)),
        r"'model.layers.0.mlp.gate_proj.weight' has shape \(48, 32\).*needs \(40, 32\)",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_checkpoint_error_names_the_problem(case, saved, tmp_path):
    arch, damage, message = DAMAGE[case]
    folder = _copy(saved, arch, tmp_path)
    damage(folder)
    with pytest.raises(CheckpointError, match=message):
        load_hf_decoder(folder)


# ----------------------------------------------------------------------------- config files


def test_published_config_files_give_the_named_sizes():
    """config.json as released on the hub (transformers 4 fields: rope_theta, rope_scaling,
    rope_local_base_freq, sliding_window_pattern) parse to our named sizes."""
    llama = {
        "model_type": "llama",
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 64,
        "hidden_act": "silu",
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 32.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "attention_bias": False,
        "mlp_bias": False,
    }
    expected = get_decoder_config("llama_3_2_1b")
    assert config_from_hf(llama, pad_token_id=expected.pad_token_id) == expected
    gemma3 = {
        "model_type": "gemma3_text",
        "vocab_size": 262144,
        "hidden_size": 1152,
        "intermediate_size": 6912,
        "num_hidden_layers": 26,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 256,
        "hidden_activation": "gelu_pytorch_tanh",
        "max_position_embeddings": 32768,
        "query_pre_attn_scalar": 256,
        "rms_norm_eps": 1e-06,
        "rope_local_base_freq": 10000,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": 512,
        "sliding_window_pattern": 6,
        "attn_logit_softcapping": None,
        "final_logit_softcapping": None,
        "bos_token_id": 2,
        "eos_token_id": 1,
        "pad_token_id": 0,
    }
    assert config_from_hf(gemma3) == get_decoder_config("gemma_3_1b")
    # transformers' own reading of the same file agrees on the layer pattern
    hf_layers = transformers.Gemma3TextConfig(**gemma3).layer_types
    ours = get_decoder_config("gemma_3_1b").layer_types
    assert [kind.split("_")[0] for kind in hf_layers] == list(ours)


@pytest.mark.parametrize(
    "hf_config",
    [
        lambda: transformers.Qwen2Config(
            num_hidden_layers=4, use_sliding_window=True, sliding_window=6, max_window_layers=2
        ),
        lambda: transformers.Qwen3Config(num_hidden_layers=3, use_sliding_window=False),
        lambda: transformers.Gemma2Config(num_hidden_layers=5),
        lambda: transformers.Gemma3TextConfig(num_hidden_layers=7),
        lambda: transformers.Phi3Config(num_hidden_layers=2, sliding_window=7),
    ],
)
def test_layer_types_without_a_list_follow_transformers_rules(hf_config):
    """A config.json without `layer_types` (the published ones) gets the sliding layers
    transformers derives for it."""
    hf = hf_config()
    raw = hf.to_dict()
    raw.pop("layer_types", None)
    ours = config_from_hf(raw)
    windowed = getattr(hf, "sliding_window", None) is not None
    hf_kinds = getattr(hf, "layer_types", None) or ["sliding_attention"] * hf.num_hidden_layers
    expected = [kind.split("_")[0] if windowed else "full" for kind in hf_kinds]
    assert list(ours.is_sliding) == [kind == "sliding" for kind in expected]
    assert ours.sliding_window == (hf.sliding_window if windowed else None)
