"""Students trained together as one vmapped program train exactly as each would alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from rounding_noise import RoundingNoise
from test_train_step_sharding import build_program, make_batch, tiny_config

from sbsd_jax.settings import from_config
from sbsd_jax.train import step as step_lib
from sbsd_jax.train.ensemble import build_ensemble_program, member_params, stack_batches

SEEDS = (3, 7)
STEPS = 3


@functools.cache
def single_program() -> step_lib.TrainProgram:
    """The trainer's own jitted step on one device (no dropout: the seed only picks the init)."""
    return build_program(tiny_config(), jax.devices()[:1])


def ensemble_of(config, num_members: int):
    spec = from_config.to_run_spec(config)
    return build_ensemble_program(spec.model, spec.optimizer, spec.step, num_members)


def alone(seed: int, transform=lambda batch: batch):
    """One student trained alone by the trainer's step."""
    program = single_program()
    state = program.init_fn(jax.random.key(seed))
    history = []
    for step in range(STEPS):
        state, metrics = program.train_step(state, transform(make_batch(seed * 100 + step)))
        history.append(jax.device_get(metrics))
    return jax.device_get(state.params), history


def test_each_member_takes_the_updates_it_would_take_alone() -> None:
    program = ensemble_of(tiny_config(), len(SEEDS))
    seeds = jnp.asarray(SEEDS, jnp.int32)
    state = program.init_fn(seeds)
    histories: list[list[dict]] = [[] for _ in SEEDS]
    for step in range(STEPS):
        batch = stack_batches([make_batch(seed * 100 + step) for seed in SEEDS])
        state, metrics = program.train_step(state, seeds, batch)
        metrics = jax.device_get(metrics)
        for index in range(len(SEEDS)):
            histories[index].append({k: v[index] for k, v in metrics.items()})
    for index, seed in list(enumerate(SEEDS))[1:]:  # the second member: not just index 0
        reference = alone(seed)
        noise = RoundingNoise.measure(lambda transform, s=seed: alone(s, transform), reference)
        noise.assert_same_params(jax.device_get(member_params(state, index)), reference[0])
        noise.assert_same_metrics(histories[index], reference[1], ("loss", "grad_norm"))
    assert int(state.step[0]) == STEPS


def test_members_with_different_seeds_are_different_students() -> None:
    program = ensemble_of(tiny_config(), 2)
    state = program.init_fn(jnp.asarray([0, 1], jnp.int32))
    first, second = (jax.tree.leaves(member_params(state, i)) for i in range(2))
    assert any(not np.allclose(a, b) for a, b in zip(first, second, strict=True))


def test_an_empty_or_accumulating_ensemble_is_refused() -> None:
    with pytest.raises(ValueError, match="num_members"):
        ensemble_of(tiny_config(), 0)
    config = tiny_config()
    config.grad_accum_steps = 2
    with pytest.raises(ValueError, match="grad_accum_steps"):
        ensemble_of(config, 2)
