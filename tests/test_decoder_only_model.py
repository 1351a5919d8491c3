"""Decoder-only model family: published sizes, logical axis names, scan/remat equivalence and
config validation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sbsd_jax.model import sharding
from sbsd_jax.model.decoder_only.config import (
    MODEL_NAMES,
    DecoderConfig,
    RopeConfig,
    get_decoder_config,
)
from sbsd_jax.model.decoder_only.decode import greedy_decode
from sbsd_jax.model.decoder_only.hf_checkpoint import params_from_state, state_from_params
from sbsd_jax.model.decoder_only.transformer import DecoderOnlyLM

# Parameter counts of the released checkpoints (safetensors totals on the hub).
PUBLISHED_PARAMETERS = {
    "qwen2_5_0_5b": 494_032_768,
    "qwen2_5_1_5b": 1_543_714_304,
    "qwen3_0_6b": 596_049_920,
    "llama_3_2_1b": 1_235_814_400,
    "llama_3_2_3b": 3_212_749_824,
    "gemma_2_2b": 2_614_341_888,
    "gemma_3_1b": 999_885_952,
    "phi_3_mini_4k": 3_821_079_552,
}


def _abstract(config: DecoderConfig) -> DecoderOnlyLM:
    return nnx.eval_shape(lambda: DecoderOnlyLM(config, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_named_sizes_have_the_published_parameter_counts(name):
    # scanned: one stacked layer to trace, the same parameters
    state = nnx.state(_abstract(get_decoder_config(name, scan_layers=True)), nnx.Param)
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(state))
    assert count == PUBLISHED_PARAMETERS[name]


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if n.endswith("_tiny")])
def test_every_parameter_has_one_logical_axis_name_per_dimension(name, scan_layers):
    model = _abstract(get_decoder_config(name, scan_layers=scan_layers))
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(variable.shape), (path, names)
        assert set(names) <= set(sharding.PARAM_AXES), (path, names)
        assert (names[0] == "layers") == (scan_layers and path[0] == "layers"), (path, names)


# gemma3 exercises the most per-layer switches: sliding and full layers, two rope tables.
TINY = get_decoder_config("gemma_3_tiny", vocab_size=64, final_logit_softcapping=20.0)


def _random_params(config: DecoderConfig, seed: int) -> dict:
    """Every parameter drawn on the host (cheaper than compiling the initialisers), at a scale
    where norms (Gemma's start at zero) and soft-caps change the result."""
    rng = np.random.default_rng(seed)
    state = nnx.state(_abstract(config.replace(scan_layers=False)), nnx.Param)
    return {
        path: rng.normal(0.0, 0.3, variable.shape).astype(np.float32)
        for path, variable in nnx.to_flat_state(state)
    }


@pytest.fixture(scope="module")
def unrolled_and_scanned():
    params = _random_params(TINY, seed=3)
    models = []
    for config in (TINY, TINY.replace(scan_layers=True, remat_policy="dots_saveable")):
        state = state_from_params(params, config)
        models.append(nnx.merge(nnx.graphdef(_abstract(config)), state))
    return tuple(models)


def _tokens() -> tuple[jax.Array, jax.Array]:
    tokens = jax.random.randint(jax.random.key(0), (2, 11), 1, TINY.vocab_size)
    segments = jnp.asarray([[1] * 11, [0, 0] + [1] * 6 + [2] * 3])
    return tokens, segments


def test_scanned_layers_with_remat_compute_the_unrolled_model(unrolled_and_scanned):
    model, scanned = unrolled_and_scanned
    tokens, segments = _tokens()

    @nnx.jit
    def loss_and_grad(m):
        def loss(m):
            return jnp.mean(m(tokens, segment_ids=segments) ** 2)

        return nnx.value_and_grad(loss)(m)

    loss, grads = loss_and_grad(model)
    scanned_loss, scanned_grads = loss_and_grad(scanned)
    np.testing.assert_allclose(scanned_loss, loss, rtol=1e-5)
    unstacked = params_from_state(scanned_grads, TINY.replace(scan_layers=True))
    for path, grad in params_from_state(grads, TINY).items():
        np.testing.assert_allclose(unstacked[path], grad, atol=1e-5, rtol=1e-4, err_msg=path)


def test_greedy_decode_of_scanned_layers_is_the_teacher_forced_argmax(unrolled_and_scanned):
    """Each token decoded with the KV cache through scanned layers is the argmax of the full
    (unrolled) forward pass over prompt + tokens so far. Unrolled decoding is checked against
    transformers in test_decoder_only_parity.py."""
    model, scanned = unrolled_and_scanned
    prompt = jax.random.randint(jax.random.key(5), (2, 6), 1, TINY.vocab_size)
    decoded = greedy_decode(scanned, prompt, max_decode_length=6, eos_ids=())
    logits = nnx.jit(lambda m, x: m(x))(model, jnp.concatenate([prompt, decoded], axis=1))
    np.testing.assert_array_equal(jnp.argmax(logits[:, 5:-1], axis=-1), decoded)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_heads=6, num_kv_heads=4), r"num_heads \(6\) must be a multiple"),
        (dict(layer_types=("full",)), "layer_types has 1 entries for 2 layers"),
        (dict(layer_types=("sliding", "full")), "sliding layers need a positive sliding_window"),
        (dict(remat_policy="some"), "remat_policy must be one of"),
        (dict(architecture="gpt2"), "architecture must be one of"),
        (
            dict(
                rope=RopeConfig(
                    rope_type="longrope",
                    original_max_position_embeddings=8,
                    short_factor=(1.0,),
                    long_factor=(1.0,),
                )
            ),
            "rope.short_factor has 1 entries, the rotary width 16 needs 8",
        ),
    ],
)
def test_config_rejects_inconsistent_fields(fields, message):
    base = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=48)
    with pytest.raises(ValueError, match=message):
        DecoderConfig(**{**base, **fields})


def test_unknown_names_and_overrides_are_refused():
    with pytest.raises(ValueError, match="Unknown decoder-only model name 'llama_9b'"):
        get_decoder_config("llama_9b")
    with pytest.raises(ValueError, match=r"Unknown DecoderConfig field\(s\).*'hidden'"):
        get_decoder_config("llama_tiny", hidden=3)


@pytest.mark.parametrize("rope_type", ["llama3", "linear", "longrope-short", "longrope-long"])
def test_rope_frequencies_match_transformers(rope_type):
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from sbsd_jax.model.decoder_only.hf_config import config_from_hf
    from sbsd_jax.model.decoder_only.rotary import attention_factor, inv_frequencies

    kind, _, length = rope_type.partition("-")
    shape = dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, vocab_size=8)
    if kind == "llama3":
        rope = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0)
        hf = transformers.LlamaConfig(
            **shape,
            rope_parameters=dict(
                rope, rope_type="llama3", rope_theta=500_000.0, original_max_position_embeddings=64
            ),
        )
    elif kind == "linear":
        hf = transformers.LlamaConfig(
            **shape, rope_parameters=dict(rope_type="linear", factor=4.0, rope_theta=10_000.0)
        )
    else:
        factors = dict(
            short_factor=[1.0 + i / 8 for i in range(4)], long_factor=[2.0 + i for i in range(4)]
        )
        hf = transformers.Phi3Config(
            **shape,
            max_position_embeddings=512,
            original_max_position_embeddings=64,
            rope_parameters=dict(
                factors,
                rope_type="longrope",
                rope_theta=10_000.0,
                partial_rotary_factor=0.5,
                original_max_position_embeddings=64,
            ),
        )
    seq_len = 65 if length == "long" else None
    expected, expected_factor = ROPE_INIT_FUNCTIONS[kind](hf, None, seq_len=seq_len)
    config = config_from_hf(hf.to_dict())
    got = inv_frequencies(config.rope, config.head_dim, long=length == "long")
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-6)
    assert attention_factor(config.rope, config.max_position_embeddings) == pytest.approx(
        expected_factor
    )


def test_sharded_forward_on_8_devices_equals_one_device(unrolled_and_scanned):
    """Parameters placed by their logical names and activations constrained with the default
    rules on a data x fsdp x tensor mesh compute the single-device logits."""
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 (fake) devices")
    _, scanned = unrolled_and_scanned
    mesh = Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), sharding.MESH_AXES)
    rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
    graphdef, state = nnx.split(scanned)
    tokens, segments = _tokens()
    tokens, segments = jnp.tile(tokens, (2, 1)), jnp.tile(segments, (2, 1))

    @functools.partial(jax.jit, static_argnums=(0, 4))
    def forward(graphdef, state, tokens, segments, activations):
        with sharding.activation_sharding(activations):
            return nnx.merge(graphdef, state)(tokens, segment_ids=segments)

    expected = forward(graphdef, state, tokens, segments, None)
    placed = jax.device_put(state, sharding.tree_shardings(state, mesh, rules))
    batch = NamedSharding(mesh, PartitionSpec(("data", "fsdp")))
    got = forward(
        graphdef,
        placed,
        jax.device_put(tokens, batch),
        jax.device_put(segments, batch),
        sharding.ActivationSharding(mesh, rules),
    )
    assert got.sharding.spec[0] == ("data", "fsdp")
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
