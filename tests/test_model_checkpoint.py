"""Hugging Face checkpoints come in and go out unchanged; broken ones fail with a named culprit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sbsd_jax.model.hf_checkpoint import (  # noqa: E402
    CheckpointError,
    load_hf_t5,
    load_hf_t5_model,
    save_hf_t5,
)


def make_hf_checkpoint(directory: Path, *, version: str) -> Path:
    torch.manual_seed(0)
    gated = version == "v1_1"
    config = transformers.T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
    )
    model = transformers.T5ForConditionalGeneration(config)
    if gated:
        model.lm_head = torch.nn.Linear(config.d_model, config.vocab_size, bias=False)
    model.save_pretrained(directory)
    (directory / "spiece.model").write_bytes(b"not a real sentencepiece model")
    return directory


@pytest.fixture(params=["v1_0", "v1_1"])
def checkpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_hf_checkpoint(tmp_path / "hf", version=request.param)


def tensors(directory: Path) -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(directory / "model.safetensors"))


def rewrite_tensors(directory: Path, change) -> None:
    values = tensors(directory)
    change(values)
    safetensors.numpy.save_file(
        values, str(directory / "model.safetensors"), metadata={"format": "pt"}
    )


def rewrite_config(directory: Path, **fields) -> None:
    config = json.loads((directory / "config.json").read_text())
    config.update(fields)
    (directory / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_round_trip_is_bit_exact(checkpoint: Path, tmp_path: Path, scan_layers: bool) -> None:
    config, state, spm = load_hf_t5(checkpoint, scan_layers=scan_layers)
    assert spm == checkpoint / "spiece.model"
    out = save_hf_t5(state, config, tmp_path / "out", tokenizer_file=spm)
    original, exported = tensors(checkpoint), tensors(out)
    assert sorted(exported) == sorted(original)
    for name, value in original.items():
        assert exported[name].dtype == value.dtype, name
        np.testing.assert_array_equal(exported[name], value, err_msg=name)
    assert (out / "spiece.model").read_bytes() == spm.read_bytes()


def test_transformers_loads_our_export_with_the_same_weights(
    checkpoint: Path, tmp_path: Path
) -> None:
    model, spm = load_hf_t5_model(checkpoint)
    out = save_hf_t5(model, model.config, tmp_path / "out", tokenizer_file=spm)
    hf_t5 = transformers.T5ForConditionalGeneration
    reference = hf_t5.from_pretrained(checkpoint, local_files_only=True)  # a local directory
    reloaded = hf_t5.from_pretrained(out, local_files_only=True)
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        expected = reference(input_ids=ids, decoder_input_ids=ids).logits
        actual = reloaded(input_ids=ids, decoder_input_ids=ids).logits
    assert torch.equal(expected, actual)
    for name, value in reference.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[name]), name


def test_export_from_a_bfloat16_copy_reads_back(checkpoint: Path, tmp_path: Path) -> None:
    config, state, _ = load_hf_t5(checkpoint)
    out = save_hf_t5(state, config, tmp_path / "bf16", dtype="bfloat16")
    _, reread, _ = load_hf_t5(out)
    original = tensors(checkpoint)["shared.weight"]
    shared = np.asarray(reread["shared"].get_value())
    np.testing.assert_allclose(shared, original, rtol=1e-2, atol=1e-2)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(out, local_files_only=True)
    assert reloaded.shared.weight.dtype == torch.bfloat16


def test_missing_tensor_is_named(checkpoint: Path) -> None:
    name = "decoder.block.1.layer.2.DenseReluDense.wo.weight"
    rewrite_tensors(checkpoint, lambda values: values.pop(name))
    with pytest.raises(CheckpointError, match=f"missing tensor '{name}'"):
        load_hf_t5(checkpoint)


def test_wrong_shape_is_named(checkpoint: Path) -> None:
    name = "encoder.block.0.layer.0.SelfAttention.q.weight"
    rewrite_tensors(checkpoint, lambda values: values.update({name: values[name][:8]}))
    with pytest.raises(CheckpointError, match=rf"{name}.*shape \(8, 16\)"):
        load_hf_t5(checkpoint)


def test_unexpected_tensor_is_named(checkpoint: Path) -> None:
    rewrite_tensors(
        checkpoint,
        lambda values: values.update(
            {"encoder.block.9.layer.0.layer_norm.weight": np.ones(16, np.float32)}
        ),
    )
    with pytest.raises(CheckpointError, match="encoder.block.9.layer.0.layer_norm.weight"):
        load_hf_t5(checkpoint)


def test_config_with_the_wrong_width_is_reported_by_tensor_and_field(checkpoint: Path) -> None:
    rewrite_config(checkpoint, d_model=32)
    with pytest.raises(CheckpointError, match=r"'shared.weight'.*d_model=32"):
        load_hf_t5(checkpoint)


def test_config_with_the_wrong_feed_forward_is_reported(checkpoint: Path) -> None:
    is_gated = "wi_0" in " ".join(tensors(checkpoint))
    rewrite_config(checkpoint, feed_forward_proj="relu" if is_gated else "gated-gelu")
    with pytest.raises(CheckpointError, match="DenseReluDense.wi"):
        load_hf_t5(checkpoint)


def test_unsupported_feed_forward_names_the_field(checkpoint: Path) -> None:
    rewrite_config(checkpoint, feed_forward_proj="gated-silu")
    with pytest.raises(CheckpointError, match="feed_forward_proj='gated-silu'"):
        load_hf_t5(checkpoint)


def test_missing_weights_file_is_reported(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_hf_t5(checkpoint)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_safetensors_file_is_named(checkpoint: Path, damage: str) -> None:
    weights = checkpoint / "model.safetensors"
    if damage == "garbage":
        weights.write_bytes(b"not a safetensors file")
    else:
        weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=f"{weights}: not a readable safetensors file"):
        load_hf_t5(checkpoint)


def test_pytorch_bin_checkpoints_load_like_safetensors(checkpoint: Path, tmp_path: Path) -> None:
    as_bin = tmp_path / "bin"
    shutil.copytree(checkpoint, as_bin)
    (as_bin / "model.safetensors").unlink()
    state_dict = {
        name: torch.from_numpy(value.copy()) for name, value in tensors(checkpoint).items()
    }
    torch.save(state_dict, as_bin / "pytorch_model.bin")
    _, from_bin, _ = load_hf_t5(as_bin)
    _, from_safetensors, _ = load_hf_t5(checkpoint)
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(from_bin), nnx.to_flat_state(from_safetensors), strict=True
    ):
        np.testing.assert_array_equal(
            np.asarray(a.get_value()), np.asarray(b.get_value()), err_msg=str(path)
        )


def test_transformers5_tied_unscaled_v1_1_save_imports_with_the_same_logits(tmp_path: Path) -> None:
    """transformers 5 ties a freshly built v1.1 head to `shared` (without the v1.0 rescale)."""
    import jax.numpy as jnp

    torch.manual_seed(1)
    config = transformers.T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=4,
        d_ff=24,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
    )
    reference = transformers.T5ForConditionalGeneration(config).eval()
    reference.save_pretrained(tmp_path)
    assert "lm_head.weight" not in tensors(tmp_path)
    model, _ = load_hf_t5_model(tmp_path)
    assert not model.config.tie_word_embeddings
    ids = np.array([[5, 6, 7, 1]])
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(ids))
    logits = model(jnp.asarray(ids), jnp.asarray(ids))
    np.testing.assert_allclose(np.asarray(logits), expected.logits.numpy(), atol=1e-4)


def test_a_local_path_that_does_not_exist_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_hf_t5(tmp_path / "nothing-here")


def test_sharded_safetensors_checkpoints_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_heads=4
    )
    transformers.T5ForConditionalGeneration(config).save_pretrained(tmp_path, max_shard_size="8KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded_config, state, _ = load_hf_t5(tmp_path)
    assert loaded_config.d_model == 16 and loaded_config.tie_word_embeddings
    assert state["shared"].get_value().shape == (64, 16)


def test_our_scanned_params_survive_export_and_import(tmp_path: Path) -> None:
    import jax

    from sbsd_jax.model.config import get_model_config
    from sbsd_jax.model.t5 import T5

    config = get_model_config("t5_tiny", vocab_size=128, scan_layers=True)
    _, params = nnx.split(T5(config, rngs=nnx.Rngs(0)), nnx.Param)
    save_hf_t5(nnx.to_pure_dict(params), config, tmp_path)  # a pure dict works too
    loaded_config, loaded, _ = load_hf_t5(tmp_path, scan_layers=True)
    assert loaded_config == config
    same = jax.tree.map(
        lambda a, b: bool(np.array_equal(a, b)), nnx.to_pure_dict(params), nnx.to_pure_dict(loaded)
    )
    assert all(jax.tree.leaves(same))


def test_a_byte_vocabulary_student_exports_a_tokenizer_that_reads_the_same_ids(
    tmp_path: Path,
) -> None:
    import seqio

    from sbsd_jax.model.config import get_model_config
    from sbsd_jax.model.t5 import T5

    config = get_model_config("t5_tiny", vocab_size=384)
    _, params = nnx.split(T5(config, rngs=nnx.Rngs(0)), nnx.Param)
    save_hf_t5(params, config, tmp_path, byte_vocabulary=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert type(tokenizer).__name__ == "ByT5Tokenizer"
    text = "predict: 7 + 5 = ?"
    ours = list(seqio.ByteVocabulary().encode(text)) + [1]  # + EOS, as the trainer feeds it
    assert tokenizer(text).input_ids == ours
    assert tokenizer.decode(ours, skip_special_tokens=True) == text
    with pytest.raises(ValueError, match="no tokenizer file"):
        save_hf_t5(params, config, tmp_path / "x", tokenizer_file="a.model", byte_vocabulary=True)
