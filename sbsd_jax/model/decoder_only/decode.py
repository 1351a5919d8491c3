"""Batched greedy decoding with a KV cache, stopping once every row has emitted an EOS.

Prompts may be padded on either side (`prompt_segment_ids`: 0 = padding); they are first
left-aligned, so every row's last prompt token sits in the same slot and the new tokens of all
rows share slots P, P+1, ...; each row's rotary positions continue from its own prompt length.
One jitted program: the prompt fills the cache in a single pass, then a while loop appends one
token per step. Works on a model or on a (nnx.GraphDef, nnx.State) pair, so a trainer can
decode inside its own jit with sharded parameters.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sbsd_jax.model.decode import compiled_bytes, decode_graph_and_state, first_argmax
from sbsd_jax.model.decoder_only.config import DecoderConfig
from sbsd_jax.model.decoder_only.transformer import DecoderOnlyLM, segment_positions

Array = jax.Array


def left_align(tokens: Array, segment_ids: Array) -> tuple[Array, Array]:
    """Moves each row's padding (segment 0) to the front, keeping token order."""
    is_real = (segment_ids != 0).astype(jnp.int32)
    order = jnp.argsort(is_real, axis=1, stable=True)
    return jnp.take_along_axis(tokens, order, axis=1), jnp.take_along_axis(is_real, order, axis=1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_decode_length", "eos_ids", "pad_id"))
def _greedy_decode(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: Array,
    prompt_segment_ids: Array,
    max_decode_length: int,
    eos_ids: tuple[int, ...],
    pad_id: int,
) -> Array:
    model: DecoderOnlyLM = nnx.merge(graphdef, state)
    tokens, segments = left_align(prompt_tokens, prompt_segment_ids)
    batch, prompt_length = tokens.shape
    cache = model.init_cache(batch, prompt_length + max_decode_length)
    logits, cache = model.extend(
        tokens, cache, positions=segment_positions(segments), segment_ids=segments
    )
    lengths = jnp.sum(segments, axis=1)
    eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

    def finished(next_tokens: Array) -> Array:
        return jnp.any(next_tokens[:, None] == eos[None, :], axis=1)

    first = first_argmax(logits[:, -1])
    output = jnp.full((batch, max_decode_length), pad_id, jnp.int32).at[:, 0].set(first)

    def keep_going(carry: tuple) -> Array:
        step, _, _, _, done = carry
        return (step < max_decode_length) & ~jnp.all(done)

    def one_step(carry: tuple) -> tuple:
        step, cache, last, output, done = carry
        positions = (lengths + step - 1)[:, None]
        logits, cache = model.extend(
            last[:, None], cache, positions=positions, segment_ids=jnp.ones_like(positions)
        )
        next_tokens = jnp.where(done, pad_id, first_argmax(logits[:, 0]))
        output = jax.lax.dynamic_update_slice_in_dim(output, next_tokens[:, None], step, axis=1)
        return step + 1, cache, next_tokens, output, done | finished(next_tokens)

    carry = (jnp.ones((), jnp.int32), cache, first, output, finished(first))
    return jax.lax.while_loop(keep_going, one_step, carry)[3]


def greedy_decode(
    model_or_graphdef: DecoderOnlyLM | nnx.GraphDef | tuple[nnx.GraphDef, nnx.State],
    prompt_tokens: Array,
    *,
    max_decode_length: int,
    prompt_segment_ids: Array | None = None,
    state: nnx.State | None = None,
    eos_ids: tuple[int, ...] | None = None,
    pad_id: int | None = None,
) -> Array:
    """Greedy continuation int32 [B, max_decode_length] of prompts [B, P].

    Each row stops at its first EOS (kept) and is filled with `pad_id` after it; decoding ends
    once every row has stopped. `eos_ids` / `pad_id` default to the config's eos_token_ids /
    pad_token_id; an empty eos_ids decodes all max_decode_length tokens.
    """
    graphdef, state = decode_graph_and_state(model_or_graphdef, state, max_decode_length)
    config = getattr(model_or_graphdef, "config", None)  # a model: no merge needed to read it
    return _greedy_decode(
        *_program_arguments(
            graphdef,
            state,
            prompt_tokens,
            prompt_segment_ids,
            max_decode_length,
            eos_ids,
            pad_id,
            config=config,
        )
    )


def compiled_decode_bytes(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: Array,
    *,
    max_decode_length: int,
    prompt_segment_ids: Array | None = None,
) -> int | None:
    """Bytes per device of one compiled greedy decode of these prompts (XLA's memory analysis:
    parameters, prompts, KV cache, temporaries); None when the backend has none."""
    arguments = _program_arguments(
        graphdef, state, prompt_tokens, prompt_segment_ids, max_decode_length, None, None
    )
    return compiled_bytes(_greedy_decode.lower(*arguments).compile())


def _program_arguments(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: Array,
    prompt_segment_ids: Array | None,
    max_decode_length: int,
    eos_ids: tuple[int, ...] | None,
    pad_id: int | None,
    *,
    config: DecoderConfig | None = None,
) -> tuple:
    """_greedy_decode's arguments, the EOS and pad ids defaulting to the config's (read from
    the merged model when not given)."""
    if config is None:
        config = nnx.merge(graphdef, state).config
    tokens = jnp.asarray(prompt_tokens, jnp.int32)
    if prompt_segment_ids is None:
        prompt_segment_ids = jnp.ones_like(tokens)
    eos = tuple(config.eos_token_ids if eos_ids is None else eos_ids)
    pad = config.pad_token_id if pad_id is None else pad_id
    return (
        graphdef,
        state,
        tokens,
        jnp.asarray(prompt_segment_ids, jnp.int32),
        max_decode_length,
        tuple(int(e) for e in eos),
        int(pad),
    )
