"""Rotary position embeddings with the scaling variants of the supported checkpoints.

Frequencies are computed once on the host in float32, as transformers does ('default',
'linear', 'llama3', 'longrope'); angles are position x frequency in float32 inside the model.
Rotation is HF's "rotate half" layout (the first and second halves of the rotary width pair
up), on the first `partial_rotary_factor` of each head; the rest passes through.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from sbsd_jax.model.decoder_only.config import RopeConfig

Array = jax.Array


def rotary_width(rope: RopeConfig, head_dim: int) -> int:
    """How many dimensions of each head rotate."""
    return int(head_dim * rope.partial_rotary_factor)


def _base_inv_frequencies(rope: RopeConfig, width: int) -> np.ndarray:
    exponents = np.arange(0, width, 2, dtype=np.int64).astype(np.float32) / np.float32(width)
    return (1.0 / np.power(np.float32(rope.theta), exponents)).astype(np.float32)


def _llama3(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
    """Llama 3.1: long wavelengths slowed by `factor`, short kept, the band between blended."""
    old_context = rope.original_max_position_embeddings
    low_wavelen = old_context / rope.low_freq_factor
    high_wavelen = old_context / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_context / wavelen - rope.low_freq_factor) / (
        rope.high_freq_factor - rope.low_freq_factor
    )
    blended = (1 - smooth) * scaled / rope.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, blended, scaled).astype(np.float32)


def inv_frequencies(rope: RopeConfig, head_dim: int, *, long: bool = False) -> np.ndarray:
    """float32 inverse frequencies [rotary_width / 2]; `long`: longrope's long factors."""
    width = rotary_width(rope, head_dim)
    inv_freq = _base_inv_frequencies(rope, width)
    if rope.rope_type == "linear":
        return (inv_freq / np.float32(rope.factor)).astype(np.float32)
    if rope.rope_type == "llama3":
        return _llama3(inv_freq, rope)
    if rope.rope_type == "longrope":
        factors = np.asarray(rope.long_factor if long else rope.short_factor, np.float32)
        exponents = np.arange(0, width, 2, dtype=np.int64).astype(np.float32) / np.float32(width)
        return (1.0 / (factors * np.power(np.float32(rope.theta), exponents))).astype(np.float32)
    return inv_freq


def attention_factor(rope: RopeConfig, max_position_embeddings: int) -> float:
    """Scale on cos and sin (longrope's attention factor; 1 otherwise)."""
    if rope.rope_type != "longrope":
        return 1.0
    if rope.attention_factor is not None:
        return float(rope.attention_factor)
    factor = max_position_embeddings / rope.original_max_position_embeddings
    if factor <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(factor) / math.log(rope.original_max_position_embeddings))


def rotary_tables(
    rope: RopeConfig, head_dim: int, max_position_embeddings: int, positions: Array
) -> tuple[Array, Array]:
    """(cos, sin), float32 [B, T, rotary_width], for int positions [B, T].

    Longrope picks its long factors when the largest position in the call reaches past
    original_max_position_embeddings, as transformers does per forward call.
    """
    inv_freq = jnp.asarray(inv_frequencies(rope, head_dim))
    if rope.rope_type == "longrope":
        long_freq = jnp.asarray(inv_frequencies(rope, head_dim, long=True))
        is_long = jnp.max(positions) + 1 > rope.original_max_position_embeddings
        inv_freq = jnp.where(is_long, long_freq, inv_freq)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    scale = jnp.float32(attention_factor(rope, max_position_embeddings))
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate heads x [B, T, heads, head_dim] by tables [B, T, width] (width <= head_dim)."""
    width = cos.shape[-1]
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    rotating, passing = x[..., :width], x[..., width:]
    first, second = rotating[..., : width // 2], rotating[..., width // 2 :]
    rotated = rotating * cos + jnp.concatenate([-second, first], axis=-1) * sin
    if passing.shape[-1] == 0:
        return rotated
    return jnp.concatenate([rotated, passing], axis=-1)
