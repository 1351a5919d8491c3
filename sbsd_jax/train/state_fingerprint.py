"""Checksums of a pytree's arrays, computed where the arrays are, to catch damaged checkpoints.

TensorStore checksums its index nodes but not the array chunks themselves: zeroed bytes in the
middle of a checkpoint's array data restore without an error, as wrong numbers. So every
checkpoint records one 32-bit checksum per array (its bits, each weighted by a hash of its
position, summed modulo 2**32) and a restore compares them. Modular integer sums do not depend
on the reduction order, so the checksum is the same under any sharding, mesh or host count.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

_POSITION_HASH = np.uint32(2654435761)  # Knuth's multiplicative hash constant (odd)


def _bits(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 values (64-bit elements become two)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    width = x.dtype.itemsize * 8
    if width == 64:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{width}")).astype(jnp.uint32)


def _checksum(x: jax.Array) -> jax.Array:
    bits = _bits(x)
    # The element's flat index from per-axis iotas (no reshape: that would move shards).
    index = jnp.zeros(bits.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(bits.ndim)):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, bits.shape, axis) * np.uint32(
            stride % 2**32
        )
        stride *= bits.shape[axis]
    weights = index * _POSITION_HASH + np.uint32(1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _checksums(leaves: list[jax.Array]) -> list[jax.Array]:
    return [_checksum(leaf) for leaf in leaves]


def path_name(key_path: tuple[Any, ...]) -> str:
    """'params/encoder/layers/0/...' for a pytree key path of dicts, sequences or attributes."""
    parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in key_path)
    return "/".join(str(part) for part in parts)


def fingerprints(tree: Any) -> dict[str, list[Any]]:
    """{array path: [dtype name, checksum]} for every array leaf of `tree` (call it on every
    process: with arrays spread over hosts it is a collective)."""
    flat = [
        (path_name(path), leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
        if isinstance(leaf, jax.Array)
    ]
    # One computation per set of devices (a jit takes arrays of one device set only).
    groups: dict[frozenset[Any], list[tuple[str, jax.Array]]] = {}
    for name, leaf in flat:
        groups.setdefault(frozenset(leaf.sharding.device_set), []).append((name, leaf))
    result: dict[str, list[Any]] = {}
    for members in groups.values():
        sums = _checksums([leaf for _, leaf in members])
        for (name, leaf), total in zip(members, sums, strict=True):
            result[name] = [str(leaf.dtype), int(np.asarray(total.addressable_data(0)))]
    return {name: result[name] for name, _ in flat}


def differing(saved: dict[str, list[Any]], restored: dict[str, list[Any]]) -> list[str]:
    """Arrays whose restored bits differ from the saved ones. An array restored as another
    dtype (a deliberate cast, e.g. float32 -> bfloat16) or saved without a checksum is not
    compared."""
    return sorted(
        name
        for name, (dtype, total) in restored.items()
        if name in saved and saved[name][0] == dtype and int(saved[name][1]) != total
    )
