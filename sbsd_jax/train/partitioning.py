"""Where every array lives: logical axis names -> mesh axes, and NamedShardings from them.

The model names each parameter dimension ('vocab', 'embed', 'mlp', 'heads', 'kv', ...) and each
activation dimension ('activation_batch', ...). A rules table (MaxText style) maps those names
onto the mesh axes ('data', 'fsdp', 'tensor'), so the same model code runs replicated on one
CPU, fully sharded over a TPU slice, or Megatron-style tensor parallel, by config alone:

- 'embed' -> 'fsdp': every weight matrix is split along d_model over the fsdp axis (ZeRO-3);
  XLA all-gathers it just in time for the matmul and reduce-scatters its gradient.
- 'mlp' / 'heads' / 'joined_kv' / 'vocab' -> 'tensor': the wide dimension of each layer is split
  over the tensor axis (Megatron: column-parallel in, row-parallel out).
- 'activation_batch' -> ('data', 'fsdp'): the batch is split over every data-parallel device.
- Parameters are replicated over 'data' (pure data parallelism), sharded over 'fsdp'.

Optimizer state mirrors its parameter's sharding (optax keeps the parameters' Variables, and
so their names, in mu / nu); anything whose shape differs from its parameter (Adafactor's
factored second moments) and every scalar (step, counts) is replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_MESH_AXES: tuple[str, ...] = ("data", "fsdp")

LogicalAxisRules = tuple[tuple[str, str | tuple[str, ...] | None], ...]

DEFAULT_LOGICAL_AXIS_RULES: LogicalAxisRules = (
    # Activations.
    ("activation_batch", BATCH_MESH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_mlp", "tensor"),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_vocab", "tensor"),
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("joined_kv", "tensor"),
    ("kv", None),
    ("relpos_buckets", None),
    ("layers", None),
)

# Metadata keys under which Flax NNX variables keep their logical axis names (0.12: out_sharding).
_SHARDING_METADATA_KEYS: tuple[str, ...] = ("out_sharding", "sharding_names", "sharding")


def resolve_rules(rules: Sequence[Sequence[Any]] | None) -> LogicalAxisRules:
    """The configured rules as a hashable tuple; empty/None means DEFAULT_LOGICAL_AXIS_RULES."""
    if not rules:
        return DEFAULT_LOGICAL_AXIS_RULES
    resolved = []
    for rule in rules:
        name, axes = rule
        if isinstance(axes, list | tuple):
            axes = tuple(axes)
        resolved.append((str(name), axes))
    return tuple(resolved)


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a model attached to a variable, or None when it has none."""
    metadata = variable.get_metadata()
    for key in _SHARDING_METADATA_KEYS:
        names = metadata.get(key)
        if names is not None and not isinstance(names, jax.sharding.Sharding):
            return tuple(names)
    return None


def _drop_indivisible(spec: P, shape: Sequence[int], mesh: Mesh | None) -> P:
    """Replicates any dimension its mesh axes do not divide (e.g. 6 heads on tensor=4)."""
    if mesh is None:
        return spec
    entries = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=False):
        if axes is None:
            entries.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        size = int(np.prod([mesh.shape[name] for name in names]))
        entries.append(axes if dim % size == 0 else None)
    return P(*entries)


def logical_to_mesh_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int],
    rules: LogicalAxisRules,
    mesh: Mesh | None = None,
) -> P:
    """PartitionSpec for one array from its logical names (replicated when names don't fit)."""
    if names is None or len(names) != len(shape):
        return P()
    spec = flax.linen.logical_to_mesh_axes(tuple(names), rules)
    return _drop_indivisible(spec, shape, mesh)


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


def tree_partition_specs(tree: Any, rules: LogicalAxisRules, mesh: Mesh | None = None) -> Any:
    """PartitionSpecs for a pytree of params, optimizer state or a whole TrainState.

    Same structure as `tree` (Variables keep their metadata and hold a PartitionSpec), so the
    result can be given to jax.jit as in/out shardings. Plain leaves are replicated.
    """

    def spec_of(node: Any) -> Any:
        if _is_variable(node):
            value = node.get_value() if hasattr(node, "get_value") else node.value
            spec = logical_to_mesh_spec(logical_names(node), np.shape(value), rules, mesh)
            return node.replace(spec)
        return P()

    return jax.tree.map(spec_of, tree, is_leaf=_is_variable)


def tree_shardings(tree: Any, mesh: Mesh, rules: LogicalAxisRules) -> Any:
    """NamedShardings for params, optimizer state or a TrainState (see tree_partition_specs)."""
    specs = tree_partition_specs(tree, rules, mesh)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


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
