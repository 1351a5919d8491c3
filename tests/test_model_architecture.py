"""Sizes, packing, dropout, dtype, remat and scan of our T5 (no PyTorch needed)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sbsd_jax.model import t5 as t5_lib
from sbsd_jax.model.config import MODEL_NAMES, T5Config, get_model_config
from sbsd_jax.model.hf_checkpoint import params_from_state, state_from_params
from sbsd_jax.model.t5 import T5

# Published parameter counts (transformers' num_parameters() of the released checkpoints).
PUBLISHED_PARAMETER_COUNTS = {
    "t5_small": 60_506_624,
    "t5_base": 222_903_552,
    "t5_large": 737_668_096,
    "t5_3b": 2_851_598_336,
    "t5_11b": 11_307_321_344,
    "t5_v1_1_small": 76_961_152,
    "t5_v1_1_base": 247_577_856,
    "t5_v1_1_large": 783_150_080,
    "t5_v1_1_xl": 2_849_757_184,
    "t5_v1_1_xxl": 11_135_332_352,
}

SMALL_VOCAB = 128


def parameter_count(config: T5Config) -> int:
    abstract = nnx.eval_shape(lambda: T5(config, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETER_COUNTS))
def test_named_sizes_have_the_published_parameter_count(name: str) -> None:
    # scan_layers traces one layer, so even 11B is counted in a fraction of a second.
    config = get_model_config(name, scan_layers=True)
    assert parameter_count(config) == PUBLISHED_PARAMETER_COUNTS[name]


def test_scanned_and_unrolled_layers_hold_the_same_parameters() -> None:
    plain, scanned = get_model_config("t5_small"), get_model_config("t5_small", scan_layers=True)
    assert parameter_count(plain) == parameter_count(scanned)


def test_flan_and_aliases_share_the_published_shapes() -> None:
    for size in ("small", "base", "large", "xl", "xxl"):
        assert get_model_config(f"flan_t5_{size}") == get_model_config(f"t5_v1_1_{size}")
    assert get_model_config("t5_xl") == get_model_config("t5_3b")
    assert get_model_config("t5_xxl") == get_model_config("t5_11b")
    assert set(PUBLISHED_PARAMETER_COUNTS) < set(MODEL_NAMES)
    assert {"t5_tiny", "t5_v1_1_tiny"} < set(MODEL_NAMES)
    assert get_model_config("t5_v1_1_base").feed_forward == "gated-gelu"
    assert not get_model_config("t5_v1_1_base").tie_word_embeddings
    assert get_model_config("t5_base").tie_word_embeddings


def test_unknown_names_and_fields_are_rejected_with_the_list() -> None:
    with pytest.raises(ValueError, match="t5_v1_1_base"):
        get_model_config("t5_gigantic")
    with pytest.raises(ValueError, match="d_modell"):
        get_model_config("t5_small", d_modell=3)
    with pytest.raises(ValueError, match="feed_forward"):
        T5Config(feed_forward="swiglu")  # type: ignore[arg-type]


def tiny(name: str = "t5_v1_1_tiny", **overrides) -> T5Config:
    return get_model_config(name, vocab_size=SMALL_VOCAB, **overrides)


def model_with(config: T5Config, params: dict) -> T5:
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: T5(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, state_from_params(params, config))


@pytest.fixture(scope="module")
def v1_1_params() -> dict:
    config = tiny()
    return params_from_state(T5(config, rngs=nnx.Rngs(0)), config)


@nnx.jit
def forward(model: T5, encoder, decoder, dropout_key=None, **packing):
    rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
    return model(encoder, decoder, deterministic=dropout_key is None, rngs=rngs, **packing)


@nnx.jit
def encode(model: T5, encoder, **packing):
    return model.encode(encoder, **packing)


@nnx.jit
def logits_and_grads(model: T5, encoder, decoder):
    def loss(model: T5):
        logits = model(encoder, decoder)
        return jnp.mean(logits**2), logits

    (_, logits), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    return logits, grads


def batch(seed: int = 0) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    encoder = rng.integers(2, SMALL_VOCAB, (2, 11))
    encoder[1, 6:] = 0
    decoder = rng.integers(2, SMALL_VOCAB, (2, 7))
    decoder[:, 0] = 0
    return jnp.asarray(encoder), jnp.asarray(decoder)


def test_two_sequences_packed_in_one_row_match_each_alone(v1_1_params: dict) -> None:
    model = model_with(tiny(), v1_1_params)
    rng = np.random.default_rng(3)
    inputs = [rng.integers(2, SMALL_VOCAB, n) for n in (7, 5)]
    targets = [rng.integers(2, SMALL_VOCAB, n) for n in (4, 6)]

    def pack(sequences: list[np.ndarray], length: int, shift: bool):
        tokens, segments, positions = (np.zeros((1, length), np.int32) for _ in range(3))
        start = 0
        for segment, sequence in enumerate(sequences, start=1):
            if shift:
                sequence = np.concatenate([[0], sequence[:-1]])
            end = start + len(sequence)
            tokens[0, start:end] = sequence
            segments[0, start:end] = segment
            positions[0, start:end] = np.arange(len(sequence))
            start = end
        return tokens, segments, positions

    enc_tokens, enc_segments, enc_positions = pack(inputs, 16, shift=False)
    dec_tokens, dec_segments, dec_positions = pack(targets, 12, shift=True)
    packed_encoded = encode(
        model,
        jnp.asarray(enc_tokens),
        encoder_segment_ids=jnp.asarray(enc_segments),
        encoder_positions=jnp.asarray(enc_positions),
    )
    packed_logits = forward(
        model,
        jnp.asarray(enc_tokens),
        jnp.asarray(dec_tokens),
        encoder_segment_ids=jnp.asarray(enc_segments),
        decoder_segment_ids=jnp.asarray(dec_segments),
        encoder_positions=jnp.asarray(enc_positions),
        decoder_positions=jnp.asarray(dec_positions),
    )
    # Each sequence alone, one per row, padded to the packed lengths (padding is masked by id).
    alone_encoder = np.zeros((2, 16), np.int32)
    alone_decoder = np.zeros((2, 12), np.int32)
    for row, (source, target) in enumerate(zip(inputs, targets, strict=True)):
        alone_encoder[row, : len(source)] = source
        alone_decoder[row, 1 : len(target)] = target[:-1]
    alone_encoded = encode(model, jnp.asarray(alone_encoder))
    alone_logits = forward(model, jnp.asarray(alone_encoder), jnp.asarray(alone_decoder))

    enc_start = dec_start = 0
    for row, (source, target) in enumerate(zip(inputs, targets, strict=True)):
        np.testing.assert_allclose(
            np.asarray(packed_encoded[0, enc_start : enc_start + len(source)]),
            np.asarray(alone_encoded[row, : len(source)]),
            atol=1e-5,
        )
        np.testing.assert_allclose(
            np.asarray(packed_logits[0, dec_start : dec_start + len(target)]),
            np.asarray(alone_logits[row, : len(target)]),
            atol=1e-5,
        )
        enc_start += len(source)
        dec_start += len(target)


@pytest.fixture(scope="module")
def plain_logits_and_grads(v1_1_params: dict) -> tuple[np.ndarray, dict]:
    logits, grads = logits_and_grads(model_with(tiny(), v1_1_params), *batch())
    return np.asarray(logits), params_from_state(grads, tiny())


@pytest.mark.parametrize(
    "scan_layers,remat_policy",
    [
        (True, "none"),
        (False, "full"),
        (True, "dots_saveable"),
    ],
)
def test_scan_and_remat_give_the_plain_model_numbers(
    v1_1_params: dict, plain_logits_and_grads, scan_layers: bool, remat_policy: str
) -> None:
    config = tiny(scan_layers=scan_layers, remat_policy=remat_policy)
    logits, grads = logits_and_grads(model_with(config, v1_1_params), *batch())
    plain_logits, plain_grads = plain_logits_and_grads
    np.testing.assert_allclose(np.asarray(logits), plain_logits, atol=1e-5)
    variant_grads = params_from_state(grads, config)
    for path, gradient in plain_grads.items():
        np.testing.assert_allclose(variant_grads[path], gradient, atol=1e-5, err_msg=str(path))


def test_dropout_is_a_pure_function_of_the_call_rngs(v1_1_params: dict) -> None:
    model = model_with(tiny(dropout_rate=0.3, scan_layers=True), v1_1_params)
    encoder, decoder = batch()
    # rbg keys compile much faster than threefry on CPU; the model works with either.
    first = forward(model, encoder, decoder, jax.random.key(1, impl="rbg"))
    again = forward(model, encoder, decoder, jax.random.key(1, impl="rbg"))
    other = forward(model, encoder, decoder, jax.random.key(2, impl="rbg"))
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(np.asarray(first), np.asarray(other))
    with pytest.raises(ValueError, match="rngs"):
        model(encoder, decoder, deterministic=False)


def test_bfloat16_compute_keeps_float32_params_and_logits(
    v1_1_params: dict, plain_logits_and_grads
) -> None:
    model = model_with(tiny(dtype="bfloat16"), v1_1_params)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))
    logits = forward(model, *batch())
    reference, _ = plain_logits_and_grads
    assert logits.dtype == jnp.float32
    scale = float(np.max(np.abs(reference)))
    assert float(np.max(np.abs(np.asarray(logits) - reference))) < 0.05 * scale


def test_v1_0_ties_the_head_and_v1_1_does_not() -> None:
    tied = nnx.eval_shape(lambda: T5(tiny("t5_tiny"), rngs=nnx.Rngs(0)))
    untied = nnx.eval_shape(lambda: T5(tiny(), rngs=nnx.Rngs(0)))
    assert not hasattr(tied, "lm_head")
    assert untied.lm_head.shape == (64, SMALL_VOCAB)
    assert dataclasses.replace(tiny(), tie_word_embeddings=True).tie_word_embeddings


@pytest.mark.parametrize(
    "spec,a_shape,b_shape",
    [
        ("bsd,dhk->bshk", (2, 5, 8), (8, 3, 4)),
        ("bqhk,hkd->bqd", (2, 5, 3, 4), (3, 4, 8)),
        ("...i,io->...o", (2, 5, 8), (8, 6)),
    ],
)
def test_accumulating_einsum_backward_matches_autodiff(
    spec: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]
) -> None:
    """The custom VJP gives JAX's gradients, with the kernel's gradient in the kernel's dtype."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=a_shape), jnp.bfloat16)
    b = jnp.asarray(rng.normal(size=b_shape), jnp.float32)
    probe = jnp.asarray(rng.normal(size=jnp.einsum(spec, a, b).shape), jnp.float32)

    def loss(a: jax.Array, b: jax.Array, accumulate_vjp: bool) -> jax.Array:
        out = t5_lib.einsum(spec, a, b, jnp.bfloat16, accumulate_vjp=accumulate_vjp)
        return jnp.sum(out.astype(jnp.float32) * probe)

    fast_a, fast_b = jax.grad(loss, argnums=(0, 1))(a, b, True)
    exact_a, exact_b = jax.grad(
        lambda a, b: jnp.sum(jnp.einsum(spec, a, b) * probe), argnums=(0, 1)
    )(a.astype(jnp.float32), b.astype(jnp.bfloat16).astype(jnp.float32))
    assert fast_a.dtype == jnp.bfloat16 and fast_b.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(fast_a, np.float32), exact_a, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(np.asarray(fast_b), exact_b, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["t5_v1_1_tiny", "t5_tiny"])  # t5_tiny: v1.0, tied LM head
def test_accumulating_dot_vjp_keeps_the_bfloat16_model_numbers(v1_1_params: dict, name) -> None:
    """And runs: XLA:CPU has no bf16 x bf16 -> f32 dot for a transposed operand (the tied LM
    head once multiplied by the embedding's transpose: UNIMPLEMENTED in DotThunk)."""
    params = v1_1_params if name == "t5_v1_1_tiny" else None
    if params is None:
        params = params_from_state(T5(tiny(name), rngs=nnx.Rngs(0)), tiny(name))

    def run(accumulate: bool) -> tuple[np.ndarray, dict]:
        config = tiny(name, dtype="bfloat16", accumulating_dot_vjp=accumulate)
        logits, grads = logits_and_grads(model_with(config, params), *batch())
        return np.asarray(logits), params_from_state(grads, config)

    logits, grads = run(True)
    default_logits, default_grads = run(False)
    np.testing.assert_allclose(logits, default_logits, atol=0.05 * np.max(np.abs(logits)))
    for path, gradient in default_grads.items():
        scale = float(np.max(np.abs(gradient))) or 1.0
        np.testing.assert_allclose(grads[path], gradient, atol=0.05 * scale, err_msg=str(path))


def test_attention_with_deferred_normalisation_is_softmax_then_dropout() -> None:
    """Attention divides the context by the softmax sum after the value product; outputs and
    gradients are those of softmax -> dropout -> product, masked keys included."""
    config = tiny(dropout_rate=0.25)
    attention = t5_lib.Attention(config, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    shape = (2, 5, config.num_heads, config.d_kv)
    query, keys, values = (jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(2, config.num_heads, 5, 5)), jnp.float32)
    bias = bias + t5_lib.attention_mask_bias(jnp.asarray(rng.random((2, 1, 5, 5)) < 0.7))
    key = jax.random.key(3)

    def explicit(query, keys, values):
        weights = jax.nn.softmax(jnp.einsum("bqhk,bshk->bhqs", query, keys) + bias, axis=-1)
        weights = t5_lib.dropout(weights, config.dropout_rate, key)
        context = jnp.einsum("bhqs,bshk->bqhk", weights, values)
        return jnp.einsum("bqhk,hkd->bqd", context, attention.out[...])

    def deferred(query, keys, values):
        return attention(query, bias, keys=keys, values=values, dropout_key=key)

    np.testing.assert_allclose(
        deferred(query, keys, values), explicit(query, keys, values), rtol=1e-5, atol=1e-6
    )
    probe = jnp.asarray(rng.normal(size=(2, 5, config.d_model)), jnp.float32)
    grads = [
        jax.grad(lambda *qkv, f=f: jnp.sum(f(*qkv) * probe), argnums=(0, 1, 2))(query, keys, values)
        for f in (deferred, explicit)
    ]
    for got, expected in zip(*grads, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
