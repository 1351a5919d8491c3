"""The decoder-only language model: embeddings, a stack of pre-norm blocks, final norm, LM head.

Inputs may be packed: `segment_ids` [B, T] (0 = padding) confine attention to each segment and
`positions` [B, T] restart the rotary positions per segment (derived from segment_ids when not
given), so a packed row computes what each of its sequences would compute alone.

Conventions (as in t5.py): parameters in `param_dtype` with logical axis names, math in
`dtype`, softmax / norm statistics / logits in float32. Layers run through nnx.split/merge so
`scan_layers` (one stacked layer under lax.scan, the layer type a scanned flag) and
`remat_policy` (jax.checkpoint) are plain JAX transforms around the same layer code. The same
`run` serves teacher forcing (no cache) and KV-cache decoding (decode.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbsd_jax.model import sharding
from sbsd_jax.model.decoder_only.attention import (
    BATCH,
    EMBED,
    LENGTH,
    Attention,
    KVCache,
    attention_bias,
    softcap,
)
from sbsd_jax.model.decoder_only.config import DecoderConfig
from sbsd_jax.model.decoder_only.mlp import MLP
from sbsd_jax.model.decoder_only.norm import RMSNorm
from sbsd_jax.model.decoder_only.params import normal, param
from sbsd_jax.model.decoder_only.rotary import rotary_tables

Array = jax.Array
DecodeCache = dict[str, Array]
Rope = tuple[Array, Array]


def segment_positions(segment_ids: Array) -> Array:
    """Position of each token within its run of equal segment ids: [B, T] int32."""
    index = jax.lax.broadcasted_iota(jnp.int32, segment_ids.shape, 1)
    starts = jnp.concatenate(
        [
            jnp.ones_like(segment_ids[:, :1], dtype=bool),
            segment_ids[:, 1:] != segment_ids[:, :-1],
        ],
        axis=1,
    )
    return index - jax.lax.cummax(jnp.where(starts, index, 0), axis=1)


def _norm(config: DecoderConfig, rngs: nnx.Rngs) -> RMSNorm:
    """An RMSNorm over d_model of the config's kind: every norm of the model is one of these."""
    return RMSNorm(
        config.d_model,
        axis="embed",
        epsilon=config.rms_norm_eps,
        gemma=config.gemma_norm,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


class Block(nnx.Module):
    """Pre-norm residual block; Gemma also normalises the attention and MLP outputs."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.attention_norm = _norm(config, rngs)
        self.attention = Attention(config, rngs=rngs)
        self.mlp_norm = _norm(config, rngs)
        self.mlp = MLP(config, rngs=rngs)
        if config.post_norms:
            self.post_attention_norm = _norm(config, rngs)
            self.post_mlp_norm = _norm(config, rngs)
        self.post_norms = config.post_norms

    def __call__(
        self,
        x: Array,
        *,
        rope: Rope,
        bias: Array,
        cache: KVCache | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        attended, cache = self.attention(
            self.attention_norm(x),
            cos=rope[0],
            sin=rope[1],
            bias=bias,
            cache=cache,
            cache_index=cache_index,
        )
        if self.post_norms:
            attended = self.post_attention_norm(attended)
        x = sharding.constrain(x + attended, (BATCH, LENGTH, EMBED))
        hidden = self.mlp(self.mlp_norm(x))
        if self.post_norms:
            hidden = self.post_mlp_norm(hidden)
        return sharding.constrain(x + hidden, (BATCH, LENGTH, EMBED)), cache


def _remat(fn: Callable[..., Any], policy_name: str, *, in_scan: bool) -> Callable[..., Any]:
    if policy_name == "none":
        return fn
    policy = None if policy_name == "full" else getattr(jax.checkpoint_policies, policy_name)
    return jax.checkpoint(fn, policy=policy, prevent_cse=not in_scan)


def _select(flag: Array | bool, if_true: Any, if_false: Any) -> Any:
    """Per-layer choice: static for unrolled layers, a select under scan."""
    if isinstance(flag, bool | np.bool_):
        return if_true if flag else if_false
    return jax.tree.map(lambda a, b: jnp.where(flag, a, b), if_true, if_false)


class DecoderOnlyLM(nnx.Module):
    """Causal LM; `__call__` returns float32 logits [B, T, vocab]."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(config.dtype)
        self.embedding = param(
            rngs,
            normal(1.0),
            (config.vocab_size, config.d_model),
            ("vocab", "embed"),
            config.param_dtype,
        )
        if config.scan_layers:

            @nnx.split_rngs(splits=config.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(layer_rngs: nnx.Rngs) -> Block:
                return Block(config, rngs=layer_rngs)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = _norm(config, rngs)
        if not config.tie_word_embeddings:
            self.lm_head = param(
                rngs,
                normal(config.d_model**-0.5),
                (config.d_model, config.vocab_size),
                ("embed", "vocab"),
                config.param_dtype,
            )

    # -- pieces

    def embed(self, tokens: Array) -> Array:
        embedded = jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)
        if self.config.scale_embeddings:
            embedded = embedded * jnp.asarray(math.sqrt(self.config.d_model), self.dtype)
        return sharding.constrain(embedded, (BATCH, LENGTH, EMBED))

    def logits(self, hidden: Array) -> Array:
        """LM head (the embedding when tied) and Gemma's final soft-capping, float32."""
        kernel = self.embedding[...].T if self.config.tie_word_embeddings else self.lm_head[...]
        logits = jnp.einsum(
            "btd,dv->btv",
            hidden.astype(self.dtype),
            kernel.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )
        logits = softcap(logits, self.config.final_logit_softcapping)
        return sharding.constrain(logits, (BATCH, LENGTH, "activation_vocab"))

    def _ropes(self, positions: Array) -> tuple[Rope, Rope]:
        """(global, local) rotary tables; local is global unless the config has local_rope."""
        config = self.config
        rope = rotary_tables(
            config.rope, config.head_dim, config.max_position_embeddings, positions
        )
        if config.local_rope is None:
            return rope, rope
        local = rotary_tables(
            config.local_rope, config.head_dim, config.max_position_embeddings, positions
        )
        return rope, local

    # -- the stack

    def run(
        self,
        tokens: Array,
        *,
        positions: Array,
        query_segments: Array,
        key_segments: Array,
        query_slots: Array,
        key_slots: Array,
        cache: DecodeCache | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, DecodeCache | None]:
        """Hidden states after the final norm [B, T, d_model] and the updated layer caches."""
        config = self.config
        global_rope, local_rope = self._ropes(positions)
        full = attention_bias(query_segments, key_segments, query_slots, key_slots, None)
        sliding = (
            attention_bias(
                query_segments, key_segments, query_slots, key_slots, config.sliding_window
            )
            if any(config.is_sliding)
            else full
        )

        def apply_layer(
            layer_state: nnx.State,
            graphdef: nnx.GraphDef,
            x: Array,
            layer_cache: KVCache | None,
            is_sliding: Array | bool,
        ) -> tuple[Array, KVCache | None]:
            layer = nnx.merge(graphdef, layer_state)
            return layer(
                x,
                rope=_select(is_sliding, local_rope, global_rope),
                bias=_select(is_sliding, sliding, full),
                cache=layer_cache,
                cache_index=cache_index,
            )

        x = self.embed(tokens)
        layer_caches = None if cache is None else (cache["keys"], cache["values"])
        if config.scan_layers:
            graphdef, state = nnx.split(self.layers)
            step = _remat(
                lambda s, h, c, f: apply_layer(s, graphdef, h, c, f),
                config.remat_policy,
                in_scan=True,
            )

            def body(h: Array, xs: tuple[Any, Any, Array]) -> tuple[Array, Any]:
                layer_state, layer_cache, flag = xs
                return step(layer_state, h, layer_cache, flag)

            flags = jnp.asarray(config.is_sliding)
            x, layer_caches = jax.lax.scan(body, x, (state, layer_caches, flags))
        else:
            new_caches = []
            for index, layer in enumerate(self.layers):
                graphdef, state = nnx.split(layer)
                step = _remat(
                    lambda s, h, c, f, g=graphdef: apply_layer(s, g, h, c, f),
                    config.remat_policy,
                    in_scan=False,
                )
                layer_cache = (
                    None
                    if layer_caches is None
                    else (layer_caches[0][index], layer_caches[1][index])
                )
                x, layer_cache = step(state, x, layer_cache, config.is_sliding[index])
                new_caches.append(layer_cache)
            if layer_caches is not None:
                layer_caches = tuple(jnp.stack([c[i] for c in new_caches]) for i in range(2))
        x = sharding.constrain(self.final_norm(x), (BATCH, LENGTH, EMBED))
        if cache is None:
            return x, None
        return x, dict(cache, keys=layer_caches[0], values=layer_caches[1])

    def __call__(
        self,
        tokens: Array,
        *,
        segment_ids: Array | None = None,
        positions: Array | None = None,
    ) -> Array:
        """Teacher-forced logits [B, T, vocab] (float32) for tokens [B, T].

        `segment_ids` [B, T]: 0 marks padding, equal non-zero ids one (packed) sequence; None
        means one sequence per row. `positions` default to each token's index in its segment.
        """
        batch, length = tokens.shape
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            positions = segment_positions(segment_ids)
        slots = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32)[None], (batch, length))
        hidden, _ = self.run(
            tokens,
            positions=positions,
            query_segments=segment_ids,
            key_segments=segment_ids,
            query_slots=slots,
            key_slots=slots,
        )
        return self.logits(hidden)

    # -- KV-cache decoding

    def init_cache(self, batch: int, length: int) -> DecodeCache:
        """Empty cache for `length` slots: per-layer keys/values, slot segment ids (0 = empty)."""
        config = self.config
        shape = (config.num_layers, batch, length, config.num_kv_heads, config.head_dim)
        empty = jnp.zeros(shape, self.dtype)
        return {
            "keys": empty,
            "values": empty,
            "segment_ids": jnp.zeros((batch, length), jnp.int32),
            "index": jnp.zeros((), jnp.int32),
        }

    def extend(
        self, tokens: Array, cache: DecodeCache, *, positions: Array, segment_ids: Array
    ) -> tuple[Array, DecodeCache]:
        """Append tokens [B, T] at cache['index'] (segment 0 = padding, others one sequence per
        row): float32 logits [B, T, vocab] and the cache with them written."""
        batch, length = tokens.shape
        index = cache["index"]
        segments = (segment_ids != 0).astype(jnp.int32)
        key_segments = jax.lax.dynamic_update_slice_in_dim(
            cache["segment_ids"], segments, index, axis=1
        )
        slots = jnp.arange(cache["segment_ids"].shape[1], dtype=jnp.int32)
        query_slots = index + jnp.arange(length, dtype=jnp.int32)
        hidden, cache = self.run(
            tokens,
            positions=positions,
            query_segments=segments,
            key_segments=key_segments,
            query_slots=jnp.broadcast_to(query_slots[None], (batch, length)),
            key_slots=jnp.broadcast_to(slots[None], (batch, slots.shape[0])),
            cache=cache,
            cache_index=index,
        )
        return self.logits(hidden), dict(cache, segment_ids=key_segments, index=index + length)
