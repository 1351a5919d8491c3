"""Logical axis names -> mesh axes, for parameters and activations.

The model names every parameter dimension ('vocab', 'embed', 'mlp', 'heads', 'kv', 'joined_kv',
'relpos_buckets', 'layers') and constrains big activations ('activation_batch', ...). A rules
table maps those names onto mesh axes, so the same model runs data parallel, FSDP or tensor
parallel without code changes. Nothing is sharded eagerly at construction time: sharding is
decided by the trainer with `logical_param_specs` and by `activation_rules` inside jit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import flax
import flax.linen as nn
import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Variables carry logical names as metadata only; the trainer places them.
flax.config.update("flax_always_shard_variable", False)

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

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


class _ActiveRules(threading.local):
    mesh: Mesh | None = None
    rules: tuple[tuple[str, MeshAxes], ...] | None = None


_ACTIVE = _ActiveRules()


@contextlib.contextmanager
def activation_rules(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Within this context (while tracing), `constrain` shards activations per `rules` on `mesh`."""
    previous = (_ACTIVE.mesh, _ACTIVE.rules)
    _ACTIVE.mesh, _ACTIVE.rules = mesh, tuple((name, axes) for name, axes in rules)
    try:
        yield
    finally:
        _ACTIVE.mesh, _ACTIVE.rules = previous


def logical_to_mesh_spec(logical_axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """PartitionSpec for one array's logical axis names (unknown names stay replicated)."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), tuple(rules))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint on an activation; a no-op unless `activation_rules` is active."""
    if _ACTIVE.rules is None or _ACTIVE.mesh is None:
        return x
    if len(logical_axes) != x.ndim:
        raise ValueError(
            f"constrain: {len(logical_axes)} logical axes {tuple(logical_axes)} "
            f"for an array of rank {x.ndim}"
        )
    spec = logical_to_mesh_spec(logical_axes, _ACTIVE.rules)
    return jax.lax.with_sharding_constraint(x, NamedSharding(_ACTIVE.mesh, spec))


def logical_param_specs(state_or_model: nnx.State | nnx.Module, rules: Rules) -> nnx.State:
    """PartitionSpec pytree (same structure as the state) mapping logical names through `rules`.

    Accepts a (possibly abstract, from nnx.eval_shape) model or its nnx.State. Variables without
    logical names get a fully replicated spec.
    """
    state = nnx.state(state_or_model) if isinstance(state_or_model, nnx.Module) else state_or_model
    logical_specs = nnx.get_partition_spec(state)
    rules = tuple(rules)

    def to_mesh(leaf: object) -> object:
        if isinstance(leaf, PartitionSpec):
            return logical_to_mesh_spec(tuple(leaf), rules)
        return PartitionSpec()

    return jax.tree.map(to_mesh, logical_specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def named_shardings(mesh: Mesh, specs: nnx.State) -> nnx.State:
    """NamedSharding pytree for a PartitionSpec pytree (e.g. for jax.jit out_shardings)."""
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec),
        specs,
        is_leaf=lambda x: isinstance(x, PartitionSpec),
    )
