"""Where a batch lives: its sharding over ('data', 'fsdp'), the rows each process loads, and
host-local blocks turned into global arrays.

Parameters and activations are placed by their logical axis names through the rules table of
sbsd_jax.model.sharding (the one logical-axis -> PartitionSpec implementation); this module is
the batch side: every array of a batch is split along its first dimension over every
data-parallel device, and `process_batch_rows` says which rows of the global batch this
process holds, so the loop can hand them to the data pipeline.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from sbsd_jax.model.sharding import BATCH_MESH_AXES, MESH_AXES

__all__ = [
    "MESH_AXES",
    "batch_partition_spec",
    "batch_sharding",
    "data_parallel_size",
    "global_shape_of_local",
    "host_local_to_global",
    "process_batch_rows",
    "replicated",
    "shards_per_dim",
]


def batch_partition_spec() -> P:
    """Every batch array is split along its first (batch) dimension over all data devices."""
    return P(BATCH_MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """One sharding for every array of a batch (a valid jit prefix for the whole batch dict)."""
    return NamedSharding(mesh, batch_partition_spec())


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch dimension is split (data x fsdp)."""
    return int(np.prod([mesh.shape[name] for name in BATCH_MESH_AXES]))


def shards_per_dim(sharding: NamedSharding, ndim: int) -> tuple[int, ...]:
    """How many pieces the sharding cuts each of `ndim` dimensions into (mesh axis products)."""
    spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
    counts = []
    for axes in spec[:ndim]:
        names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        counts.append(int(np.prod([sharding.mesh.shape[name] for name in names])))
    return tuple(counts)


def _process_pieces(
    sharding: NamedSharding,
    global_shape: tuple[int, ...],
    devices: Sequence[jax.Device] | None,
) -> list[list[tuple[int, int]]]:
    """Per dimension, the distinct (start, stop) pieces the shards on `devices` cover, sorted."""
    index_map = sharding.devices_indices_map(global_shape)
    devices = list(sharding.addressable_devices if devices is None else devices)
    shards = [index_map[device] for device in devices if device in index_map]
    if not shards:
        raise ValueError(
            f"none of this process's devices {[d.id for d in devices]} is in the mesh "
            f"{dict(sharding.mesh.shape)}; a multi-process mesh must use every device"
        )
    bounds = [
        tuple(index.indices(size)[:2] for index, size in zip(shard, global_shape, strict=True))
        for shard in shards
    ]
    return [sorted({bound[dim] for bound in bounds}) for dim in range(len(global_shape))]


def process_batch_rows(
    sharding: NamedSharding,
    num_rows: int,
    devices: Sequence[jax.Device] | None = None,
) -> np.ndarray:
    """The rows (ascending indices) of a global batch of `num_rows` rows this process loads.

    Derived from where the sharding puts the rows, not from the process index: when a mesh
    axis the batch is not split over (e.g. 'tensor') spans processes, those processes load the
    same rows; and on a TPU pod the physical device order can give a host batch shards that
    are not adjacent (e.g. rows 0-3 and 8-11), which it loads in ascending order, the order
    jax.make_array_from_process_local_data expects. `devices` defaults to this process's
    devices (a parameter for tests).
    """
    shards = shards_per_dim(sharding, max(1, len(sharding.spec)))
    if num_rows < 1 or num_rows % shards[0]:
        raise ValueError(
            f"a global batch of {num_rows} rows does not split over the {shards[0]} batch "
            f"shards of {sharding.spec} on mesh {dict(sharding.mesh.shape)}"
        )
    pieces = _process_pieces(sharding, (num_rows, *shards[1:]), devices)
    return np.concatenate([np.arange(start, stop) for start, stop in pieces[0]])


def global_shape_of_local(
    sharding: NamedSharding,
    local_shape: Sequence[int],
    devices: Sequence[jax.Device] | None = None,
) -> tuple[int, ...]:
    """The global shape of which `local_shape` is this process's part.

    Counted in shards: a process holding k of the n pieces of a dimension holds k/n of it
    (shards shared with other processes count once; jax.make_array_from_process_local_data
    takes the local data as the process's pieces in order, contiguous or not).
    """
    return _global_shape_of_local(
        sharding,
        tuple(int(size) for size in local_shape),
        None if devices is None else tuple(devices),
    )


@functools.lru_cache(maxsize=64)
def _global_shape_of_local(
    sharding: NamedSharding,
    local_shape: tuple[int, ...],
    devices: tuple[jax.Device, ...] | None,
) -> tuple[int, ...]:
    """Cached: host_local_to_global asks for every array of every batch, always the same."""
    shards = shards_per_dim(sharding, len(local_shape))
    pieces = _process_pieces(sharding, shards, devices)
    global_shape = []
    for dim, (size, count, intervals) in enumerate(zip(local_shape, shards, pieces, strict=True)):
        held = len(intervals)
        if size % held:
            raise ValueError(
                f"dimension {dim} of a process-local array of shape {local_shape} does not "
                f"split into the {held} shard(s) of {sharding.spec} this process holds"
            )
        global_shape.append(size // held * count)
    return tuple(global_shape)


def host_local_to_global(
    batch: Mapping[str, np.ndarray],
    mesh: Mesh,
    shardings: NamedSharding | Mapping[str, NamedSharding] | None = None,
) -> dict[str, jax.Array]:
    """Turns this process's block of a batch into global jax.Arrays placed on the mesh.

    Each process passes the rows process_batch_rows gives it (processes that share rows pass
    the same rows); the global shape is derived from the sharding the same way and passed
    explicitly, so shared rows are not counted twice. On a single process this is a sharded
    device_put. `shardings` defaults to batch_sharding(mesh).
    """
    result = {}
    for key, local in batch.items():
        if isinstance(shardings, Mapping):
            sharding = shardings[key]
        else:
            sharding = shardings if shardings is not None else batch_sharding(mesh)
        local = np.asarray(local)
        result[key] = jax.make_array_from_process_local_data(
            sharding, local, global_shape_of_local(sharding, local.shape)
        )
    return result
