"""Parameter creation: every parameter carries its logical axis names (see model/sharding.py).

Variables hold the names as metadata only; the trainer places them with the rules table.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def param(
    rngs: nnx.Rngs,
    init: Callable[..., jax.Array],
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    dtype: str,
) -> nnx.Param:
    """A Param of `shape` from `init`, with one logical axis name per dimension."""
    if len(axes) != len(shape):
        raise ValueError(f"param: {len(axes)} logical axes {axes} for shape {shape}")
    return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, jnp.dtype(dtype)))


def normal(stddev: float) -> Callable[..., jax.Array]:
    return nnx.initializers.normal(stddev=stddev)


def project(spec: str, x: jax.Array, kernel: jax.Array, dtype: jnp.dtype) -> jax.Array:
    """`x` times a (float32) kernel, multiplied in the compute dtype."""
    return jnp.einsum(spec, x.astype(dtype), kernel.astype(dtype))
