"""Batched greedy decoding with a key/value cache, stopping once every row has emitted EOS.

Works on a model or on an (nnx.GraphDef, nnx.State) pair, so a trainer can decode inside its own
jit with sharded parameters: `greedy_decode(graphdef, tokens, state=state, max_decode_length=64)`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sbsd_jax.model.t5 import T5


@functools.partial(jax.jit, static_argnames=("graphdef", "max_decode_length", "eos_id"))
def _greedy_decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    encoder_input_tokens: jax.Array,
    max_decode_length: int,
    eos_id: int,
) -> jax.Array:
    model: T5 = nnx.merge(graphdef, state)
    batch = encoder_input_tokens.shape[0]
    encoded = model.encode(encoder_input_tokens)
    cache = model.init_decode_cache(encoded, encoder_input_tokens, max_decode_length)
    start = jnp.full((batch,), model.config.decoder_start_token_id, jnp.int32)
    output = jnp.zeros((batch, max_decode_length), jnp.int32)
    done = jnp.zeros((batch,), jnp.bool_)

    def keep_going(carry: tuple) -> jax.Array:
        step, _, _, _, done = carry
        return (step < max_decode_length) & ~jnp.all(done)

    def one_step(carry: tuple) -> tuple:
        step, cache, last_tokens, output, done = carry
        logits, cache = model.decode_step(last_tokens, cache)
        next_tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        next_tokens = jnp.where(done, 0, next_tokens)  # pad after EOS
        output = jax.lax.dynamic_update_slice_in_dim(output, next_tokens[:, None], step, axis=1)
        return step + 1, cache, next_tokens, output, done | (next_tokens == eos_id)

    carry = (jnp.zeros((), jnp.int32), cache, start, output, done)
    return jax.lax.while_loop(keep_going, one_step, carry)[3]


def greedy_decode(
    model_or_graphdef: T5 | nnx.GraphDef | tuple[nnx.GraphDef, nnx.State],
    encoder_input_tokens: jax.Array,
    *,
    max_decode_length: int,
    state: nnx.State | None = None,
    eos_id: int = 1,
) -> jax.Array:
    """Greedy tokens int32 [B, max_decode_length] (no start token), 0 after each row's EOS.

    The model may also be given as `(graphdef, state)`. Padding (id 0) in
    `encoder_input_tokens` is masked. T5 vocabularies use EOS id 1.
    """
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
    tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
    return _greedy_decode(graphdef, state, tokens, max_decode_length, eos_id)
