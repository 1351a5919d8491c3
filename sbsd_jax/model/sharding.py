"""Logical axis names -> mesh axes: the one place a rules table becomes PartitionSpecs.

The model names every parameter dimension ('vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv',
'relpos_buckets', 'layers') and constrains big activations ('activation_batch', ...). A rules
table (MaxText / T5X style) maps those names onto the mesh axes ('data', 'fsdp', 'tensor'), so
the same model runs data parallel, FSDP or tensor parallel without code changes:

- 'embed' -> 'fsdp': every weight matrix is split along d_model over the fsdp axis (ZeRO-3);
  XLA all-gathers it just in time for the matmul and reduce-scatters its gradient.
- 'mlp' / 'heads' / 'joined_kv' / 'vocab' -> 'tensor': the wide dimension of each layer is split
  over the tensor axis (Megatron: column-parallel in, row-parallel out).
- 'activation_batch' -> ('data', 'fsdp'): the batch is split over every data-parallel device.

Parameters: nothing is sharded at construction (`flax_always_shard_variable` off); the trainer
places them with `tree_shardings`. Activations: `constrain` applies the rules of an
`ActivationSharding` that a jitted function receives as an argument (a static one: part of
its cache key, so two meshes or rules tables never share a compiled program) and enters
with `activation_sharding(...)` while it traces; outside such a trace `constrain` is a no-op.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import flax
import flax.linen
import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Variables carry logical names as metadata only; the trainer places them.
flax.config.update("flax_always_shard_variable", False)

MeshAxes = str | tuple[str, ...] | None
LogicalAxisRules = tuple[tuple[str, MeshAxes], ...]
Rules = Sequence[tuple[str, MeshAxes]]

MESH_AXES: tuple[str, ...] = ("data", "fsdp", "tensor")
BATCH_MESH_AXES: tuple[str, ...] = ("data", "fsdp")

PARAM_AXES: tuple[str, ...] = (
    "vocab",
    "embed",
    "mlp",
    "heads",
    "kv",
    "joined_kv",
    "relpos_buckets",
    "layers",
)
ACTIVATION_AXES: tuple[str, ...] = (
    "activation_batch",
    "activation_length",
    "activation_embed",
    "activation_mlp",
    "activation_heads",
    "activation_kv",
    "activation_vocab",
)

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


def _drop_indivisible(
    spec: PartitionSpec, shape: Sequence[int], mesh: Mesh | None
) -> PartitionSpec:
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
    return PartitionSpec(*entries)


def logical_to_mesh_spec(
    names: Sequence[str | None] | None,
    shape: Sequence[int] | None,
    rules: Rules,
    mesh: Mesh | None = None,
) -> PartitionSpec:
    """PartitionSpec for one array from its logical names; unknown names stay replicated, and
    with a mesh so does any dimension its mesh axes do not divide. `shape` None: the names
    alone (an activation whose rank was checked by the caller)."""
    if names is None or (shape is not None and len(names) != len(shape)):
        return PartitionSpec()
    spec = flax.linen.logical_to_mesh_axes(tuple(names), tuple(rules))
    return spec if shape is None else _drop_indivisible(spec, shape, mesh)


def logical_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names a model attached to a variable, or None when it has none."""
    metadata = variable.get_metadata()
    for key in _SHARDING_METADATA_KEYS:
        names = metadata.get(key)
        if names is not None and not isinstance(names, jax.sharding.Sharding):
            return tuple(names)
    return None


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


def tree_partition_specs(tree: Any, rules: Rules, mesh: Mesh | None = None) -> Any:
    """PartitionSpecs for a pytree of params, optimizer state or a whole TrainState.

    Same structure as `tree` (Variables keep their metadata and hold a PartitionSpec), so the
    result can be given to jax.jit as in/out shardings. Plain leaves are replicated. Optimizer
    state mirrors its parameter (optax keeps the parameters' Variables, and so their names, in
    mu / nu); a leaf whose shape differs from its names (Adafactor's factored moments) and every
    scalar is replicated.
    """
    rules = tuple(rules)

    def spec_of(node: Any) -> Any:
        if _is_variable(node):
            value = node.get_value() if hasattr(node, "get_value") else node.value
            spec = logical_to_mesh_spec(logical_names(node), np.shape(value), rules, mesh)
            return node.replace(spec)
        return PartitionSpec()

    return jax.tree.map(spec_of, tree, is_leaf=_is_variable)


def logical_param_specs(state_or_model: nnx.State | nnx.Module, rules: Rules) -> Any:
    """tree_partition_specs of a (possibly abstract) model or its nnx.State, mesh-free: the
    specs the rules give, before any indivisible dimension is replicated."""
    state = nnx.state(state_or_model) if isinstance(state_or_model, nnx.Module) else state_or_model
    return tree_partition_specs(state, rules)


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for params, optimizer state or a TrainState (see tree_partition_specs)."""
    specs = tree_partition_specs(tree, rules, mesh)
    return jax.tree.map(lambda spec: NamedSharding(mesh, spec), specs)


@dataclasses.dataclass(frozen=True)
class ActivationSharding:
    """Where activations go: a mesh and a rules table. Hashable, so a jitted function takes it
    as a static argument and compiles once per (mesh, rules)."""

    mesh: Mesh
    rules: LogicalAxisRules

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", resolve_rules(self.rules))


class _Tracing(threading.local):
    sharding: ActivationSharding | None = None


_TRACING = _Tracing()


@contextlib.contextmanager
def activation_sharding(sharding: ActivationSharding | None) -> Iterator[None]:
    """While a function that received `sharding` as an argument traces: `constrain` uses it.

    Enter it inside the jitted function, never around a call to one: the rules must reach jit
    as an argument (its cache key), not through this context. None: no constraints."""
    previous = _TRACING.sharding
    _TRACING.sharding = sharding
    try:
        yield
    finally:
        _TRACING.sharding = previous


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation; a no-op outside `activation_sharding`."""
    active = _TRACING.sharding
    if active is None:
        return x
    if len(logical_axes) != x.ndim:
        raise ValueError(
            f"constrain: {len(logical_axes)} logical axes {tuple(logical_axes)} "
            f"for an array of rank {x.ndim}"
        )
    spec = logical_to_mesh_spec(logical_axes, None, active.rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(active.mesh, spec))
