"""Grouped-query self-attention with rotary positions, optional QK-norm, soft-capping and
segment-aware causal / sliding-window masks.

Kernels are [embed, heads, head_dim] (query), [embed, kv_heads, head_dim] (key, value) and
[heads, head_dim, embed] (out). Key/value heads use the logical name 'heads' too: query head h
belongs to key/value head h // group, so splitting both head axes into the same number of
contiguous blocks keeps every group on one device (and a kv head count the mesh does not
divide is replicated by the partitioning rules).

Masks are built from segment ids (0 = padding: attends to nothing, seen by nothing) and slot
indices (where a token sits in the row or in the KV cache): a query sees keys of its own
segment at or before its slot, and on sliding layers only the `window` most recent slots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sbsd_jax.model import sharding
from sbsd_jax.model.decoder_only.config import DecoderConfig
from sbsd_jax.model.decoder_only.norm import RMSNorm
from sbsd_jax.model.decoder_only.params import normal, param, project
from sbsd_jax.model.decoder_only.rotary import apply_rotary

Array = jax.Array
KVCache = tuple[Array, Array]  # keys, values [B, S, kv_heads, head_dim]

MASK_VALUE = -1e10  # finite: a fully masked (padding) query gets a uniform softmax, not NaN
BATCH, LENGTH, EMBED = "activation_batch", "activation_length", "activation_embed"
HEADS, KV = "activation_heads", "activation_kv"


def attention_bias(
    query_segments: Array,
    key_segments: Array,
    query_slots: Array,
    key_slots: Array,
    window: int | None,
) -> Array:
    """Additive float32 bias [B, 1, 1, Q, K] (broadcast over kv heads and groups)."""
    same = query_segments[:, :, None] == key_segments[:, None, :]
    allowed = same & (key_segments != 0)[:, None, :]
    distance = query_slots[:, :, None] - key_slots[:, None, :]
    allowed &= distance >= 0
    if window is not None:
        allowed &= distance < window
    return jnp.where(allowed, 0.0, MASK_VALUE).astype(jnp.float32)[:, None, None]


def softcap(x: Array, cap: float | None) -> Array:
    """cap * tanh(x / cap) (Gemma 2's logit soft-capping); identity when cap is None."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap


class Attention(nnx.Module):
    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        d, h, k, dh = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
        pdt = config.param_dtype
        self.query = param(rngs, normal(d**-0.5), (d, h, dh), ("embed", "heads", "kv"), pdt)
        self.key = param(rngs, normal(d**-0.5), (d, k, dh), ("embed", "heads", "kv"), pdt)
        self.value = param(rngs, normal(d**-0.5), (d, k, dh), ("embed", "heads", "kv"), pdt)
        self.out = param(rngs, normal((h * dh) ** -0.5), (h, dh, d), ("heads", "kv", "embed"), pdt)
        if config.qkv_bias:
            zeros = nnx.initializers.zeros
            self.query_bias = param(rngs, zeros, (h, dh), ("heads", "kv"), pdt)
            self.key_bias = param(rngs, zeros, (k, dh), ("heads", "kv"), pdt)
            self.value_bias = param(rngs, zeros, (k, dh), ("heads", "kv"), pdt)
        if config.out_bias:
            self.out_bias = param(rngs, nnx.initializers.zeros, (d,), ("embed",), pdt)
        if config.qk_norm:
            norm = dict(
                axis="kv",
                epsilon=config.rms_norm_eps,
                gemma=config.gemma_norm,
                dtype=config.dtype,
                param_dtype=pdt,
                rngs=rngs,
            )
            self.query_norm = RMSNorm(dh, **norm)
            self.key_norm = RMSNorm(dh, **norm)
        self.config = config
        self.dtype = jnp.dtype(config.dtype)

    def _heads(self, x: Array, kernel: nnx.Param, bias_name: str) -> Array:
        projected = project("btd,dhk->bthk", x, kernel[...], self.dtype)
        if self.config.qkv_bias:
            projected = projected + getattr(self, bias_name)[...].astype(self.dtype)
        return sharding.constrain(projected, (BATCH, LENGTH, HEADS, KV))

    def project_qkv(self, x: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
        """Rotated queries [B, T, heads, dh], rotated keys and values [B, T, kv_heads, dh]."""
        query = self._heads(x, self.query, "query_bias")
        key = self._heads(x, self.key, "key_bias")
        value = self._heads(x, self.value, "value_bias")
        if self.config.qk_norm:
            query, key = self.query_norm(query), self.key_norm(key)
        return apply_rotary(query, cos, sin), apply_rotary(key, cos, sin), value

    def attend(self, query: Array, keys: Array, values: Array, bias: Array) -> Array:
        """Queries [B, T, H, dh] over keys/values [B, S, K, dh] with bias [B, 1, 1, T, S]."""
        batch, length, heads, head_dim = query.shape
        groups = heads // keys.shape[2]
        grouped = query.reshape(batch, length, keys.shape[2], groups, head_dim)
        scores = jnp.einsum(
            "btkgd,bskd->bkgts",
            grouped,
            keys.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )
        scores = softcap(scores * self.config.attention_scale, self.config.attn_logit_softcapping)
        weights = jax.nn.softmax(scores + bias, axis=-1).astype(self.dtype)
        context = jnp.einsum("bkgts,bskd->btkgd", weights, values.astype(self.dtype))
        context = context.reshape(batch, length, heads, head_dim)
        return sharding.constrain(context, (BATCH, LENGTH, HEADS, KV))

    def __call__(
        self,
        x: Array,
        *,
        cos: Array,
        sin: Array,
        bias: Array,
        cache: KVCache | None = None,
        cache_index: Array | None = None,
    ) -> tuple[Array, KVCache | None]:
        """Self-attention of x [B, T, d_model]; with `cache`, this call's keys and values are
        written at slots cache_index.. and the queries attend over the whole cache."""
        query, keys, values = self.project_qkv(x, cos, sin)
        new_cache = None
        if cache is not None:
            keys = jax.lax.dynamic_update_slice_in_dim(
                cache[0], keys.astype(cache[0].dtype), cache_index, axis=1
            )
            values = jax.lax.dynamic_update_slice_in_dim(
                cache[1], values.astype(cache[1].dtype), cache_index, axis=1
            )
            keys = sharding.constrain(keys, (BATCH, LENGTH, HEADS, KV))
            values = sharding.constrain(values, (BATCH, LENGTH, HEADS, KV))
            new_cache = (keys, values)
        context = self.attend(query, keys, values, bias)
        out = project("bthk,hkd->btd", context, self.out[...], self.dtype)
        if self.config.out_bias:
            out = out + self.out_bias[...].astype(self.dtype)
        return sharding.constrain(out, (BATCH, LENGTH, EMBED)), new_cache
