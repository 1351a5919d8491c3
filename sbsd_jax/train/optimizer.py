"""The optimizer and learning-rate schedule of an OptimizerSpec (config.optimizer, ...).

Default = the reference recipe (Hugging Face Seq2SeqTrainer defaults): AdamW(lr 5e-5,
betas 0.9/0.999, eps 1e-8, weight decay 0), linear decay to 0 over the run, no warmup, and
global-norm gradient clipping at 1.0. Adafactor (T5's own optimizer, factored second moments,
so far less optimizer memory for the XXL student) is `--config.optimizer=adafactor`; with its
parameter-scaled updates T5 used a constant 1e-3 (`--config.learning_rate=1e-3
--config.lr_schedule=constant`).

With `scan_layers` the model stacks each layer kind into one array with a leading 'layers' axis.
Adafactor's per-parameter statistics (factored second moments, update clipping by block RMS,
the parameter-scale RMS) treat that axis as a batch axis, as T5X does: every layer of a stacked
array is updated exactly as the unscanned layer would be. AdamW is elementwise and needs nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sbsd_jax.model.sharding import logical_names
from sbsd_jax.settings.spec import LR_SCHEDULES, OPTIMIZERS, OptimizerSpec

__all__ = [
    "LR_SCHEDULES",
    "OPTIMIZERS",
    "adafactor",
    "make_learning_rate_schedule",
    "make_optimizer",
]


def make_learning_rate_schedule(spec: OptimizerSpec) -> optax.Schedule:
    """Learning rate as a function of the optimizer step (0-based), with linear warmup.

    constant: warmup to the peak, then flat. linear: warmup, then linear decay to
    end_learning_rate_fraction * peak at num_train_steps (HF's get_linear_schedule_with_warmup).
    linear_warmup_cosine: warmup, then cosine decay to the same end. rsqrt: warmup, then
    peak * sqrt(warmup / step) (T5's inverse square root; with no warmup, peak / sqrt(step)).
    """
    peak = spec.learning_rate
    warmup = spec.warmup_steps
    total = spec.num_train_steps
    end = peak * spec.end_learning_rate_fraction
    name = spec.lr_schedule
    if name not in LR_SCHEDULES:
        raise ValueError(f"config.lr_schedule={name!r}: expected one of {LR_SCHEDULES}")
    warmup_schedule = optax.linear_schedule(0.0, peak, max(warmup, 1))
    if name == "constant":
        after = optax.constant_schedule(peak)
    elif name == "linear":
        after = optax.linear_schedule(peak, end, max(total - warmup, 1))
    elif name == "linear_warmup_cosine":
        after = optax.cosine_decay_schedule(peak, max(total - warmup, 1), alpha=end / peak)
    else:

        def after(step: jax.Array) -> jax.Array:
            offset = max(warmup, 1)
            return peak * jax.lax.rsqrt((jnp.asarray(step, jnp.float32) + offset) / offset)

    if warmup == 0:
        return after
    return optax.join_schedules([warmup_schedule, after], [warmup])


LAYER_AXIS = "layers"  # logical name t5.py gives the stacked axis of scanned layers

StackedFn = Callable[[optax.Params], Any]


def _is_variable(node: Any) -> bool:
    return isinstance(node, nnx.Variable)


def stacked_layers(params: optax.Params) -> Any:
    """True for each parameter whose first logical axis is 'layers' (a scan_layers stack).

    Same tree structure as `params` (Variables kept, holding a bool), so it can be mapped
    together with params, updates and optimizer state. Plain arrays (no names) are False.
    """
    nodes = jax.tree.leaves(params, is_leaf=_is_variable)
    flags = []
    for node in nodes:
        names = logical_names(node) if _is_variable(node) else None
        flags.append(bool(names) and names[0] == LAYER_AXIS)
    return jax.tree.unflatten(jax.tree.structure(params), flags)


def _decay_mask(params: optax.Params) -> optax.Params:
    """Weight decay on matrices only, never on norm scales (HF skips LayerNorm weights); a
    stacked [layers, d] norm scale is still a vector per layer."""
    return jax.tree.map(
        lambda stacked, p: jnp.ndim(p) - int(stacked) > 1, stacked_layers(params), params
    )


def _layerwise(fn: Callable[..., Any], stacked: bool) -> Callable[..., Any]:
    """`fn` of one parameter's arrays, mapped over the leading 'layers' axis when stacked."""
    return jax.vmap(fn) if stacked else fn


# Adjacent logical axes that Adafactor factors as one (T5X's factor rules give 'heads' and 'kv'
# both the COLUMN role): an attention kernel [embed, heads, kv] has second moments factored as
# [embed] x [heads*kv], as T5X's joined_kv kernels have, instead of stored in full (optax
# factors only the two largest dims, and heads/kv are each below min_dim_size_to_factor).
_JOINED_FOR_FACTORING = ("heads", "kv")


@dataclasses.dataclass(frozen=True)
class _FactoringShape:
    """Not a pytree node: the per-layer shape a parameter's second moments are factored in
    (None: its own shape)."""

    shape: tuple[int, ...] | None


def factoring_shapes(params: optax.Params, min_dim_size_to_factor: int = 128) -> Any:
    """For each parameter, the per-layer shape its Adafactor statistics use: ('heads', 'kv')
    joined into one dimension when that makes it factorable, else None (unchanged)."""

    def shape_of(node: Any) -> _FactoringShape:
        names = logical_names(node) if _is_variable(node) else None
        if not names:
            return _FactoringShape(None)
        value = node.get_value() if hasattr(node, "get_value") else node.value
        shape = list(np.shape(value))
        names = list(names)
        if names[0] == LAYER_AXIS:
            shape, names = shape[1:], names[1:]
        for index in range(len(names) - 1):
            if tuple(names[index : index + 2]) == _JOINED_FOR_FACTORING:
                joined = [*shape[:index], shape[index] * shape[index + 1], *shape[index + 2 :]]
                two_largest = sorted(joined)[-2:]
                if len(joined) >= 2 and min(two_largest) >= min_dim_size_to_factor:
                    return _FactoringShape(tuple(joined))
        return _FactoringShape(None)

    nodes = jax.tree.leaves(params, is_leaf=_is_variable)
    return jax.tree.unflatten(jax.tree.structure(params), [shape_of(node) for node in nodes])


@dataclasses.dataclass(frozen=True)
class _LeafResult:
    """Not a pytree node: keeps one parameter's (update, state) together through tree.map."""

    update: jax.Array
    state: optax.FactoredState


def per_layer(
    inner: optax.GradientTransformation, stacked: StackedFn = stacked_layers
) -> optax.GradientTransformation:
    """A stateless per-parameter transform (block-RMS clipping or scaling) applied to every
    parameter on its own, and to each layer of a stacked parameter on its own."""

    def update_fn(
        updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.OptState]:
        if params is None:
            raise ValueError("per_layer needs the parameters (to find the stacked ones)")

        def leaf(flag: bool, update: jax.Array, param: jax.Array) -> jax.Array:
            def one(u: jax.Array, p: jax.Array) -> jax.Array:
                return inner.update(u, optax.EmptyState(), p)[0]

            return _layerwise(one, flag)(update, param)

        return jax.tree.map(leaf, stacked(params), updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def _reshaped(array: jax.Array, factoring: _FactoringShape) -> jax.Array:
    return array if factoring.shape is None else array.reshape(factoring.shape)


def _is_factored_state(node: Any) -> bool:
    return isinstance(node, optax.FactoredState)


def _factored_init(
    inner: optax.GradientTransformation, stacked: StackedFn, min_dim: int
) -> Callable[[optax.Params], optax.FactoredState]:
    """per_layer_factored_rms's init: optax's state of each layer, stacked per parameter."""

    def init_fn(params: optax.Params) -> optax.FactoredState:
        states = jax.tree.map(
            lambda flag, factoring, p: _layerwise(
                lambda one: inner.init(_reshaped(one, factoring)), flag
            )(p),
            stacked(params),
            factoring_shapes(params, min_dim),
            params,
        )

        def field(name: str) -> Any:
            return jax.tree.map(lambda s: getattr(s, name), states, is_leaf=_is_factored_state)

        return optax.FactoredState(
            count=jnp.zeros([], jnp.int32),
            v_row=field("v_row"),
            v_col=field("v_col"),
            v=field("v"),
        )

    return init_fn


def _factored_leaf_update(
    inner: optax.GradientTransformation, count: jax.Array
) -> Callable[..., _LeafResult]:
    """One parameter's update (layer by layer when stacked) from its slice of the state."""

    def leaf(
        flag: bool,
        factoring: _FactoringShape,
        grad: jax.Array,
        v_row: jax.Array,
        v_col: jax.Array,
        v: jax.Array,
        param: jax.Array,
    ) -> _LeafResult:
        def one(
            g: jax.Array, vr: jax.Array, vc: jax.Array, vv: jax.Array, p: jax.Array
        ) -> tuple[jax.Array, optax.FactoredState]:
            update, new = inner.update(
                _reshaped(g, factoring),
                optax.FactoredState(count, vr, vc, vv),
                _reshaped(p, factoring),
            )
            return update.reshape(g.shape), new

        update, new_state = _layerwise(one, flag)(grad, v_row, v_col, v, param)
        return _LeafResult(update, new_state)

    return leaf


def per_layer_factored_rms(
    stacked: StackedFn = stacked_layers, **kwargs: Any
) -> optax.GradientTransformation:
    """optax.scale_by_factored_rms (Adafactor's second moments, `kwargs` passed on) with the
    statistics of a stacked parameter kept per layer: for a [layers, ...] array they equal the
    per-layer statistics stacked (optax would factor or not by the stacked shape). Attention
    kernels are factored with 'heads' and 'kv' joined (factoring_shapes), as T5X does.

    The state is optax's FactoredState (one step count; v_row, v_col, v shaped like optax's
    for a per-layer parameter, with a leading 'layers' axis for stacked ones), so optimizer
    state shardings follow the parameters as before.
    """
    inner = optax.scale_by_factored_rms(**kwargs)
    min_dim = int(kwargs.get("min_dim_size_to_factor", 128))

    def update_fn(
        updates: optax.Updates, state: optax.FactoredState, params: optax.Params | None = None
    ) -> tuple[optax.Updates, optax.FactoredState]:
        if params is None:
            raise ValueError("per_layer_factored_rms needs the parameters")
        results = jax.tree.map(
            _factored_leaf_update(inner, state.count),
            stacked(params),
            factoring_shapes(params, min_dim),
            updates,
            state.v_row,
            state.v_col,
            state.v,
            params,
        )

        def field(name: str) -> Any:
            return jax.tree.map(lambda r: getattr(r.state, name), results)

        new_updates = jax.tree.map(lambda r: r.update, results)
        # Each leaf's own count (broadcast over layers by vmap) is dropped: one shared count.
        return new_updates, optax.FactoredState(
            count=optax.safe_increment(state.count),
            v_row=field("v_row"),
            v_col=field("v_col"),
            v=field("v"),
        )

    return optax.GradientTransformation(_factored_init(inner, stacked, min_dim), update_fn)


def adafactor(
    learning_rate: optax.ScalarOrSchedule,
    *,
    weight_decay_rate: float | None = None,
    weight_decay_mask: Any = None,
    stacked: StackedFn = stacked_layers,
    min_dim_size_to_factor: int = 128,
    decay_rate: float = 0.8,
    clipping_threshold: float = 1.0,
    min_param_scale: float = 1e-3,
    eps: float = 1e-30,
) -> optax.GradientTransformation:
    """optax.adafactor's chain (same defaults, same order), layer-aware for scanned stacks.

    factored RMS -> clip by block RMS -> x learning rate -> x parameter block RMS -> + decay.
    Weight decay follows optax/T5X: `weight_decay_rate * param` is added *after* the learning
    rate and the parameter scale, so it is NOT multiplied by the learning rate (optax.adamw's
    decoupled decay is: lr * wd * param). For unstacked parameters the result is optax.adafactor's,
    except attention kernels, factored with heads and kv joined (factoring_shapes).
    """
    transforms = [
        per_layer_factored_rms(
            stacked,
            factored=True,
            decay_rate=decay_rate,
            step_offset=0,
            min_dim_size_to_factor=min_dim_size_to_factor,
            epsilon=eps,
        ),
        per_layer(optax.clip_by_block_rms(clipping_threshold), stacked),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False),
        per_layer(optax.scale_by_param_block_rms(min_param_scale), stacked),
    ]
    if weight_decay_rate:
        transforms.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
    transforms.append(optax.scale(-1.0))
    return optax.chain(*transforms)


def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """Clipping (if grad_clip_norm > 0) followed by the configured optimizer and schedule.

    Weight decay (spec.weight_decay, matrices only): AdamW applies optax.adamw's decoupled
    decay, lr(t) * weight_decay * param per step. Adafactor keeps T5X/optax semantics: the decay
    is added after the learning-rate scaling, i.e. weight_decay * param per step, NOT scaled by
    the learning rate or its schedule (choose the value accordingly). With
    scan_layers, Adafactor treats the stacked 'layers' axis as a batch axis (see `adafactor`).
    """
    schedule = make_learning_rate_schedule(spec)
    name = spec.name
    if name == "adamw":
        optimizer = optax.adamw(
            schedule,
            b1=spec.adam_b1,
            b2=spec.adam_b2,
            eps=spec.adam_eps,
            weight_decay=spec.weight_decay,
            mask=_decay_mask,
        )
    elif name == "adafactor":
        optimizer = adafactor(
            schedule,
            weight_decay_rate=spec.weight_decay or None,
            weight_decay_mask=_decay_mask,
        )
    else:
        raise ValueError(f"config.optimizer={name!r}: expected one of {OPTIMIZERS}")
    if spec.grad_clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(spec.grad_clip_norm), optimizer)
    return optimizer
