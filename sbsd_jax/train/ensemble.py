"""Several independent students of one config trained as one program: `jax.vmap` over states.

The seeds and data fractions of a small sweep are independent runs with identical shapes, so
stacking their parameters and optimizer states on a leading "member" axis and mapping the
ordinary train step over it trains all of them with one compiled step and one loop. On 2 CPU
cores it is no faster per student than one at a time (measured with the demo's 64-wide
students); wider hosts are not measured. Member i sees only its own batches
(`batch[key][i]`), its own initialisation key and its own dropout key; with vmap nothing is
shared, so each member takes exactly the updates it would take alone (up to float summation
order inside the batched kernels).

    program = build_ensemble_program(spec.model, spec.optimizer, spec.step, num_members=12)
    state = program.init_fn(seeds)                            # TrainState, [12, ...] leaves
    state, metrics = program.train_step(state, seeds, batch)  # batch leaves [12, rows, length]
    params_i = member_params(state, i)                        # for decoding or export
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sbsd_jax.data.features import BATCH_KEYS
from sbsd_jax.model.spec import ModelSpec
from sbsd_jax.settings.spec import OptimizerSpec, StepSpec
from sbsd_jax.train import loss as loss_lib
from sbsd_jax.train import optimizer as optimizer_lib
from sbsd_jax.train.step import dropout_key, make_loss_fn
from sbsd_jax.train.train_state import TrainState

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class EnsembleProgram:
    """init_fn(seeds int32 [K]) -> stacked TrainState; train_step(state, seeds, batch) ->
    (state, metrics [K] each); graphdef + member_params(state, i) give member i's model back."""

    num_members: int
    model_config: Any
    graphdef: nnx.GraphDef
    init_fn: Callable[[jax.Array], TrainState]
    train_step: Callable[[TrainState, jax.Array, Batch], tuple[TrainState, dict[str, jax.Array]]]


def _member_init(model: ModelSpec, model_config: Any, optimizer: optax.GradientTransformation):
    graphdef_cell: list[nnx.GraphDef] = []

    def init(seed: jax.Array) -> TrainState:
        module = model.build(model_config, nnx.Rngs(params=jax.random.key(seed)))
        graphdef, params = nnx.split(module, nnx.Param)
        graphdef_cell[:] = [graphdef]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    return init, graphdef_cell


def build_ensemble_program(
    model: ModelSpec, optimizer: OptimizerSpec, step: StepSpec, num_members: int
) -> EnsembleProgram:
    """The jitted, member-mapped init and train step for `num_members` copies of one run.

    Single-device (the demo's and a laptop's case); members share method, alpha, optimizer and
    shapes, and differ in seed and data. Dropout keys are fold_in(key(seed_i), step), as for one
    run of sbsd_jax.train.step with that seed (`step.seed` itself is not used)."""
    if num_members < 1:
        raise ValueError(f"num_members must be >= 1, got {num_members}")
    if step.grad_accum_steps != 1:
        raise ValueError("an ensemble trains without gradient accumulation (grad_accum_steps=1)")
    model_config = model.config_for(jax.default_backend())
    transform = optimizer_lib.make_optimizer(optimizer)
    init, graphdef_cell = _member_init(model, model_config, transform)
    jax.eval_shape(init, jnp.zeros((), jnp.int32))
    graphdef = graphdef_cell[0]
    loss_fn = make_loss_fn(model, graphdef, step.alpha, step.method)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    schedule = optimizer_lib.make_learning_rate_schedule(optimizer)
    use_dropout = model_config.dropout_rate > 0

    def member_step(
        state: TrainState, seed: jax.Array, batch: Batch
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        member = dataclasses.replace(step, seed=seed)
        key = dropout_key(member, use_dropout, state.step)
        counts = loss_lib.task_token_counts(batch)
        (_, metrics), grads = grad_fn(state.params, batch, key, counts)
        updates, opt_state = transform.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    mapped_step = jax.vmap(member_step)

    def train_step(
        state: TrainState, seeds: jax.Array, batch: Batch
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        return mapped_step(state, seeds, {key: batch[key] for key in BATCH_KEYS})

    return EnsembleProgram(
        num_members=num_members,
        model_config=model_config,
        graphdef=graphdef,
        init_fn=jax.jit(jax.vmap(init)),
        train_step=jax.jit(train_step, donate_argnums=(0,)),
    )


def stack_batches(batches: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch per member -> [K, ...] arrays (every member's batch has the same shapes)."""
    keys = batches[0].keys()
    return {key: np.stack([batch[key] for batch in batches]) for key in keys}


def member_params(state: TrainState, index: int) -> Any:
    """Member `index`'s parameters (an nnx.State like a single run's TrainState.params)."""
    return jax.tree.map(lambda leaf: leaf[index], state.params)
