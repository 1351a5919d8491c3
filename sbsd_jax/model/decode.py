"""Batched greedy decoding with a key/value cache, stopping once every row has emitted EOS.

Works on a model or on an (nnx.GraphDef, nnx.State) pair, so a trainer can decode inside its own
jit with sharded parameters: `greedy_decode(graphdef, tokens, state=state, max_decode_length=64)`.

The decoder step here is written for one query token, on the model's own layers and kernels
(`T5.decode_step` stays the general, teacher-forcing-equivalent path). What a profile of the
generic step showed on XLA:CPU (T5 v1.1-small, batch 64, 64 input tokens), and what this does:

* Attention of one query over a [B, S, heads, kv] cache is a batched dot whose operands XLA
  must transpose on every step (~12 ms per layer and step for cross-attention): the caches
  here are kept [B, heads, S, kv], the layout the batched dot wants (0.2 ms).
* `jnp.argmax` over [B, vocab] lowers to a variadic reduce (13.6 ms at vocab 32,128); a max
  then the first index holding it is the same token, 2.6 ms.
* Per-layer caches travel as separate arrays, not stacked [layers, ...] arrays sliced and
  re-stacked around every step.
Cross-attention keys and values are computed once from the encoder output, before the loop.
After these, the step is ~80% dot kernels (`benchmarks/decode_profile.py`: the LM head alone a
third) at about their standalone speed per CPU-second; one fused q|k|v or wi_0|wi_1 dot, or a
[vocab, d_model] LM-head kernel, left its CPU time unchanged (48.7 vs 48.5 ms), so none is here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sbsd_jax.model import sharding
from sbsd_jax.model.t5 import T5, Block, attention_mask_bias, einsum

Array = jax.Array


def first_argmax(logits: Array) -> Array:
    """int32 index of the first maximum along the last axis (as jnp.argmax), in two fused
    reductions instead of XLA:CPU's slow variadic (value, index) reduce."""
    best = jnp.max(logits, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    return jnp.min(jnp.where(logits == best, index, logits.shape[-1]), axis=-1).astype(jnp.int32)


def _attend_one(query: Array, keys: Array, values: Array, bias: Array, dtype: jnp.dtype) -> Array:
    """One query per row: query [B, H, kv], keys/values [B, H, S, kv], bias [B or 1, H or 1, S]
    (position bias plus mask, float32) -> context [B, H, kv] in `dtype`. T5: no 1/sqrt(d)."""
    scores = jnp.einsum(
        "bhk,bhsk->bhs", query.astype(dtype), keys.astype(dtype), preferred_element_type=jnp.float32
    )
    scores = scores + bias
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    context = jnp.einsum(
        "bhs,bhsk->bhk", weights.astype(dtype), values, preferred_element_type=jnp.float32
    )
    return (context / jnp.sum(weights, axis=-1)[..., None]).astype(dtype)


def _heads_first(projected: Array) -> Array:
    """[B, S, H, kv] -> [B, H, S, kv]."""
    return jnp.transpose(projected, (0, 2, 1, 3))


def _output(attention: nnx.Module, context: Array, dtype: jnp.dtype) -> Array:
    """The attention's output projection of a [B, H, kv] context: [B, 1, d_model]."""
    return einsum("bhk,hkd->bd", context, attention.out[...], dtype)[:, None]


def _layer_step(
    layer: Block,
    x: Array,
    self_cache: tuple[Array, Array],
    cross_cache: tuple[Array, Array],
    step: Array,
    self_bias: Array,
    cross_bias: Array,
) -> tuple[Array, tuple[Array, Array]]:
    """One decoder block for one token x [B, 1, d_model]; writes this step's self K/V."""
    dtype = layer.self_attention.dtype
    query, key, value = layer.self_attention.project_qkv(layer.self_attention_norm(x))
    self_keys = jax.lax.dynamic_update_slice_in_dim(
        self_cache[0], _heads_first(key).astype(self_cache[0].dtype), step, axis=2
    )
    self_values = jax.lax.dynamic_update_slice_in_dim(
        self_cache[1], _heads_first(value).astype(self_cache[1].dtype), step, axis=2
    )
    context = _attend_one(query[:, 0], self_keys, self_values, self_bias, dtype)
    x = x + _output(layer.self_attention, context, dtype)

    query = layer.cross_attention.project_query(layer.cross_attention_norm(x))
    context = _attend_one(query[:, 0], cross_cache[0], cross_cache[1], cross_bias, dtype)
    x = x + _output(layer.cross_attention, context, dtype)
    x = x + layer.mlp(layer.mlp_norm(x), None)
    return x, (self_keys, self_values)


def _decoder_layers(model: T5) -> list[Block]:
    """The decoder's blocks, one module each (a scanned stack is sliced per layer)."""
    if not model.config.scan_layers:
        return list(model.decoder.layers)
    graphdef, state = nnx.split(model.decoder.layers)
    return [
        nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state))
        for i in range(model.config.num_decoder_layers)
    ]


@functools.partial(
    jax.jit, static_argnames=("graphdef", "max_decode_length", "eos_id", "activation_sharding")
)
def _greedy_decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    encoder_input_tokens: jax.Array,
    max_decode_length: int,
    eos_id: int,
    activation_sharding: sharding.ActivationSharding | None = None,
) -> jax.Array:
    # The activation rules are a static argument: part of the cache key of the compiled decoder.
    with sharding.activation_sharding(activation_sharding):
        return _decode_loop(graphdef, state, encoder_input_tokens, max_decode_length, eos_id)


def _decode_loop(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    encoder_input_tokens: jax.Array,
    max_decode_length: int,
    eos_id: int,
) -> jax.Array:
    model: T5 = nnx.merge(graphdef, state)
    config = model.config
    batch = encoder_input_tokens.shape[0]
    encoded = model.encode(encoder_input_tokens).astype(model.dtype)
    layers = _decoder_layers(model)
    cross_caches = tuple(
        tuple(_heads_first(a) for a in layer.cross_attention.project_kv(encoded))
        for layer in layers
    )
    key_mask = model.encoder_key_mask(encoder_input_tokens, None, config.pad_token_id)
    cross_bias = attention_mask_bias(key_mask[:, None, :])  # [B, 1, S]
    empty = jnp.zeros((batch, config.num_heads, max_decode_length, config.d_kv), model.dtype)
    key_positions = jnp.arange(max_decode_length, dtype=jnp.int32)[None, :]

    def keep_going(carry: tuple) -> jax.Array:
        step, _, _, _, done = carry
        return (step < max_decode_length) & ~jnp.all(done)

    def one_step(carry: tuple) -> tuple:
        step, self_caches, last_tokens, output, done = carry
        position_bias = model.decoder.relative_position_bias(
            jnp.reshape(step, (1, 1)), key_positions
        )
        self_bias = position_bias[:, :, 0] + attention_mask_bias(key_positions <= step)[:, None]
        x = model.embed(last_tokens[:, None])
        new_caches = []
        for layer, self_cache, cross_cache in zip(layers, self_caches, cross_caches, strict=True):
            x, self_cache = _layer_step(
                layer, x, self_cache, cross_cache, step, self_bias, cross_bias
            )
            new_caches.append(self_cache)
        logits = model.logits(model.decoder.final_norm(x))[:, 0]
        next_tokens = jnp.where(done, 0, first_argmax(logits))  # pad after EOS
        output = jax.lax.dynamic_update_slice_in_dim(output, next_tokens[:, None], step, axis=1)
        return step + 1, tuple(new_caches), next_tokens, output, done | (next_tokens == eos_id)

    carry = (
        jnp.zeros((), jnp.int32),
        tuple((empty, empty) for _ in layers),
        jnp.full((batch,), config.decoder_start_token_id, jnp.int32),
        jnp.zeros((batch, max_decode_length), jnp.int32),
        jnp.zeros((batch,), jnp.bool_),
    )
    return jax.lax.while_loop(keep_going, one_step, carry)[3]


DecodeModel = nnx.Module | nnx.GraphDef | tuple[nnx.GraphDef, nnx.State]


def decode_graph_and_state(
    model_or_graphdef: DecodeModel, state: nnx.State | None, max_decode_length: int
) -> tuple[nnx.GraphDef, nnx.State]:
    """The (graphdef, state) a jitted decode takes, from the forms every greedy_decode accepts
    (a model; a graphdef with state=; a (graphdef, state) pair), checking them and the length."""
    if isinstance(model_or_graphdef, tuple):
        if state is not None:
            raise ValueError("greedy_decode: state given twice")
        model_or_graphdef, state = model_or_graphdef
    if isinstance(model_or_graphdef, nnx.Module):
        if state is not None:
            raise ValueError("greedy_decode: pass a model or (graphdef, state=...), not both")
        graphdef, state = nnx.split(model_or_graphdef)
    else:
        if state is None:
            raise ValueError("greedy_decode: a graphdef needs state=")
        graphdef = model_or_graphdef
    if max_decode_length <= 0:
        raise ValueError(
            f"greedy_decode: max_decode_length must be positive, got {max_decode_length}"
        )
    return graphdef, state


def greedy_decode(
    model_or_graphdef: T5 | nnx.GraphDef | tuple[nnx.GraphDef, nnx.State],
    encoder_input_tokens: jax.Array,
    *,
    max_decode_length: int,
    state: nnx.State | None = None,
    eos_id: int = 1,
    activation_sharding: sharding.ActivationSharding | None = None,
) -> jax.Array:
    """Greedy tokens int32 [B, max_decode_length] (no start token), 0 after each row's EOS.

    The model may also be given as `(graphdef, state)`. Padding (id 0) in
    `encoder_input_tokens` is masked. T5 vocabularies use EOS id 1; an eos_id no token has
    (e.g. -1) decodes all max_decode_length tokens. `activation_sharding` (mesh + rules, see
    model/sharding.py) constrains the activations of a sharded decode; None leaves them to XLA.
    """
    graphdef, state = decode_graph_and_state(model_or_graphdef, state, max_decode_length)
    tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
    return _greedy_decode(graphdef, state, tokens, max_decode_length, eos_id, activation_sharding)


def compiled_decode_bytes(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    encoder_input_tokens: jax.Array,
    *,
    max_decode_length: int,
    eos_id: int = 1,
    activation_sharding: sharding.ActivationSharding | None = None,
) -> int | None:
    """Bytes XLA's memory analysis gives for one compiled greedy decode of this batch, per
    device: arguments (parameters, inputs) + outputs not aliased to them + temporaries
    (caches, activations). None when the backend has no analysis."""
    compiled = _greedy_decode.lower(
        graphdef, state, encoder_input_tokens, max_decode_length, eos_id, activation_sharding
    ).compile()
    return compiled_bytes(compiled)


def compiled_bytes(compiled: jax.stages.Compiled) -> int | None:
    """A compiled program's bytes per device by XLA's memory analysis: arguments + outputs not
    aliased to them + temporaries; None when the backend has no analysis."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return int(
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )
