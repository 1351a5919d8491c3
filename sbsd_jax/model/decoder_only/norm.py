"""RMSNorm, in the Llama (x * w) and the Gemma (x * (1 + w)) variants.

Statistics in float32. The two variants round differently in low precision, each as in its
Hugging Face model: Llama casts the normalised input back to the compute dtype and then
multiplies by the weight; Gemma multiplies by (1 + w) in float32 and casts last. Gemma stores
w (initialised to zero) so its checkpoints load unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sbsd_jax.model.decoder_only.params import param

Array = jax.Array


def rms_norm(x: Array, weight: Array, *, epsilon: float, gemma: bool, dtype: jnp.dtype) -> Array:
    """RMS-normalise the last axis of `x` and scale it by `weight` (or 1 + weight)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + epsilon)
    if gemma:
        return (normed * (1.0 + weight.astype(jnp.float32))).astype(dtype)
    return normed.astype(dtype) * weight.astype(dtype)


class RMSNorm(nnx.Module):
    """One scale vector over the last axis, named `axis` for sharding ('embed' or 'kv')."""

    def __init__(
        self,
        width: int,
        *,
        axis: str,
        epsilon: float,
        gemma: bool,
        dtype: str,
        param_dtype: str,
        rngs: nnx.Rngs,
    ):
        init = nnx.initializers.zeros if gemma else nnx.initializers.ones
        self.scale = param(rngs, init, (width,), (axis,), param_dtype)
        self.epsilon = epsilon
        self.gemma = gemma
        self.dtype = jnp.dtype(dtype)

    def __call__(self, x: Array) -> Array:
        return rms_norm(
            x, self.scale[...], epsilon=self.epsilon, gemma=self.gemma, dtype=self.dtype
        )
