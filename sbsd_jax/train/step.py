"""The jitted multi-task train step, the sharded state initialiser, and their abstract shapes.

One `jax.jit` per function, with explicit in/out shardings on the mesh and the state donated,
so parameters, optimizer state and batch stay where the rules table puts them and nothing
returns to the host inside a step. Both tasks of a batch (label and rationale sequences, padded
or packed) go through a single forward/backward pass; `loss.multitask_loss` splits the token
losses by `decoder_task_ids`.

Typical use (what sbsd_jax.main does):

    mesh = mesh_lib.make_mesh(config)
    program = build_train_program(config, mesh)
    state = program.init_fn(jax.random.key(config.seed))          # sharded on the mesh
    batch = partitioning.host_local_to_global(numpy_batch, mesh)
    state, metrics = program.train_step(state, batch)              # metrics stay on device
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from sbsd_jax.model import sharding as model_sharding
from sbsd_jax.model.config import T5Config, get_model_config
from sbsd_jax.model.t5 import T5
from sbsd_jax.train import compute_dtype, partitioning
from sbsd_jax.train import loss as loss_lib
from sbsd_jax.train import optimizer as optimizer_lib
from sbsd_jax.train.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
TrainStepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]

# Arrays of a batch the step reads (decoder_task_ids / loss weights drive the loss).
MODEL_INPUT_KEYS: tuple[str, ...] = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
    "decoder_task_ids",
)


def resolve_compute_dtype(config: ml_collections.ConfigDict, platform: str | None = None) -> str:
    """'auto' -> bfloat16 on TPU/GPU and on CPUs where it measured faster, else float32
    (compute_dtype.py; `platform` defaults to JAX's backend). Explicit values stay."""
    dtype = config.compute_dtype
    if dtype != "auto":
        return dtype
    return compute_dtype.auto_compute_dtype(platform or jax.default_backend())


def model_overrides(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """config.model_overrides as T5Config keyword arguments, unset (None) fields dropped."""
    overrides = config.get("model_overrides") or {}
    if isinstance(overrides, ml_collections.ConfigDict):
        overrides = overrides.to_dict()
    return {name: value for name, value in dict(overrides).items() if value is not None}


def build_model_config(config: ml_collections.ConfigDict, platform: str | None = None) -> T5Config:
    """The T5Config for config.model with the trainer's numerics and config.model_overrides."""
    overrides = model_overrides(config)
    platform = platform or jax.default_backend()
    overrides.setdefault("dtype", resolve_compute_dtype(config, platform))
    overrides.setdefault("accumulating_dot_vjp", platform == "cpu")
    overrides.setdefault("param_dtype", config.param_dtype)
    overrides.setdefault("remat_policy", config.remat_policy)
    overrides.setdefault("scan_layers", bool(config.scan_layers))
    return get_model_config(config.model, **overrides)


def _init_state_fn(
    model_config: T5Config, optimizer: optax.GradientTransformation
) -> tuple[Callable[[jax.Array], TrainState], list[nnx.GraphDef]]:
    """An un-jitted key -> TrainState function, and a cell that receives the model's graphdef."""
    graphdef_cell: list[nnx.GraphDef] = []

    def init(key: jax.Array) -> TrainState:
        model = T5(model_config, rngs=nnx.Rngs(params=key))
        graphdef, params = nnx.split(model, nnx.Param)
        graphdef_cell[:] = [graphdef]
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    return init, graphdef_cell


def abstract_train_state(
    model_config: T5Config, optimizer: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs) without allocating anything.

    Used to derive shardings, to AOT-compile for hardware we do not have, and as the Orbax
    restore target (attach shardings with `with_shardings`).
    """
    init, graphdef_cell = _init_state_fn(model_config, optimizer)
    abstract = jax.eval_shape(init, jax.random.key(0))
    return graphdef_cell[0], abstract


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that also say where each array lives (Orbax restore / AOT lowering)."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state,
        shardings,
    )


def make_init_fn(
    model_config: T5Config,
    optimizer: optax.GradientTransformation,
    state_shardings: TrainState,
) -> Callable[[jax.Array], TrainState]:
    """A jitted key -> TrainState that creates every array directly in its shard.

    Nothing is materialised whole on one device, so an XXL student starts on a pod slice.
    `key` is a typed key (jax.random.key(seed)).
    """
    init, _ = _init_state_fn(model_config, optimizer)
    return jax.jit(init, out_shardings=state_shardings)


def make_state_from_params_fn(
    optimizer: optax.GradientTransformation, state_shardings: TrainState
) -> Callable[[nnx.State], TrainState]:
    """A jitted params -> fresh TrainState (step 0, new optimizer state), for pretrained starts.

    `params` is an nnx.State with the same structure as TrainState.params (e.g. from
    sbsd_jax.model.hf_checkpoint.load_hf_t5); the result is sharded like `state_shardings`.
    """

    def from_params(params: nnx.State) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )

    return jax.jit(
        from_params, in_shardings=(state_shardings.params,), out_shardings=state_shardings
    )


def train_state_shardings(
    abstract_state: TrainState, mesh: Mesh, rules: partitioning.LogicalAxisRules
) -> TrainState:
    """NamedShardings for every array of the state: params by the rules, optimizer state like
    its parameter, scalars replicated."""
    return partitioning.tree_shardings(abstract_state, mesh, rules)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[B, ...] -> [num_microbatches, B / num_microbatches, ...], row i going to micro-batch
    i % num_microbatches, so every device keeps its own rows (no resharding)."""

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {key: split(value) for key, value in batch.items()}


def make_loss_fn(
    graphdef: nnx.GraphDef, alpha: float, method: str
) -> Callable[..., tuple[jax.Array, Metrics]]:
    """(params, batch, dropout_key, token_counts) -> (loss, metrics); both tasks, one pass."""

    def loss_fn(
        params: nnx.State,
        batch: Batch,
        dropout_key: jax.Array | None,
        token_counts: tuple[jax.Array, jax.Array] | None,
    ) -> tuple[jax.Array, Metrics]:
        model = nnx.merge(graphdef, params)
        logits = model(
            batch["encoder_input_tokens"],
            batch["decoder_input_tokens"],
            encoder_segment_ids=batch["encoder_segment_ids"],
            decoder_segment_ids=batch["decoder_segment_ids"],
            encoder_positions=batch["encoder_positions"],
            decoder_positions=batch["decoder_positions"],
            deterministic=dropout_key is None,
            rngs=None if dropout_key is None else nnx.Rngs(dropout=dropout_key),
        )
        return loss_lib.multitask_loss(logits, batch, alpha, method, token_counts=token_counts)

    return loss_fn


def make_train_step(
    config: ml_collections.ConfigDict,
    graphdef: nnx.GraphDef,
    mesh: Mesh,
    state_shardings: TrainState,
    optimizer: optax.GradientTransformation,
    rules: partitioning.LogicalAxisRules | None = None,
    *,
    donate: bool = True,
) -> TrainStepFn:
    """The jitted (state, batch) -> (new state, metrics) for this config.

    - Dropout key = fold_in(key(config.seed, impl=config.rng_impl), state.step): the step is a
      pure function and a resumed run draws the same masks as an uninterrupted one. With
      dropout_rate 0 no key is made and the model runs deterministic.
    - config.grad_accum_steps > 1 scans over micro-batches, summing gradients; each micro-batch
      loss uses the whole batch's per-task token counts (see loss.py), so the update equals the
      full-batch one.
    - Gradients are clipped by global norm inside the optimizer (optimizer.py).
    - Metrics (replicated device scalars): loss, label_loss, rationale_loss, label_tokens,
      rationale_tokens, grad_norm (before clipping), learning_rate (used for this update).
    The batch must hold MODEL_INPUT_KEYS (extra keys are ignored), split over ('data', 'fsdp').
    """
    rules = partitioning.resolve_rules(rules if rules is not None else config.logical_axis_rules)
    alpha = float(config.alpha)
    method = config.method
    num_micro = int(config.grad_accum_steps)
    seed = int(config.seed)
    rng_impl = config.get("rng_impl", "threefry2x32")
    use_dropout = build_model_config(config).dropout_rate > 0
    schedule = optimizer_lib.make_learning_rate_schedule(config)
    loss_fn = make_loss_fn(graphdef, alpha, method)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    param_shardings = state_shardings.params
    batch_sharding = partitioning.batch_sharding(mesh)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        batch = {key: batch[key] for key in MODEL_INPUT_KEYS}
        step_key = None
        if use_dropout:
            step_key = jax.random.fold_in(jax.random.key(seed, impl=rng_impl), state.step)
        counts = loss_lib.task_token_counts(batch)
        with model_sharding.activation_rules(mesh, rules):
            if num_micro == 1:
                (_, metrics), grads = grad_fn(state.params, batch, step_key, counts)
            else:
                micro_batches = _split_microbatches(batch, num_micro)

                def accumulate(carry, xs):
                    grads_sum, metrics_sum = carry
                    index, micro = xs
                    micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
                    key = None if step_key is None else jax.random.fold_in(step_key, index)
                    (_, metrics), grads = grad_fn(state.params, micro, key, counts)
                    grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
                    metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
                    return (grads_sum, metrics_sum), None

                zero_grads = jax.lax.with_sharding_constraint(
                    jax.tree.map(jnp.zeros_like, state.params), param_shardings
                )
                zero_metrics = {
                    name: jnp.zeros((), jnp.float32)
                    for name in (
                        "loss",
                        "label_loss",
                        "rationale_loss",
                        "label_tokens",
                        "rationale_tokens",
                    )
                }
                (grads, metrics), _ = jax.lax.scan(
                    accumulate,
                    (zero_grads, zero_metrics),
                    (jnp.arange(num_micro), micro_batches),
                )
        grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """Everything the loop needs to train one config on one mesh, built once.

    init_fn(key) -> sharded TrainState; init_from_params_fn(params) -> TrainState for a
    pretrained start; train_step(state, batch) -> (state, metrics); abstract_state (shapes, for
    Orbax restore together with state_shardings, see `with_shardings`); graphdef + params give
    the model back: `nnx.merge(program.graphdef, state.params)`.
    """

    config: ml_collections.ConfigDict
    mesh: Mesh
    rules: partitioning.LogicalAxisRules
    model_config: T5Config
    optimizer: optax.GradientTransformation
    graphdef: nnx.GraphDef
    abstract_state: TrainState
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init_fn: Callable[[jax.Array], TrainState]
    init_from_params_fn: Callable[[nnx.State], TrainState]
    train_step: TrainStepFn

    @property
    def abstract_state_with_shardings(self) -> TrainState:
        return with_shardings(self.abstract_state, self.state_shardings)

    def model(self, state: TrainState) -> T5:
        """The NNX model holding `state.params` (no copy), e.g. for evaluation or export."""
        return nnx.merge(self.graphdef, state.params)


def build_train_program(
    config: ml_collections.ConfigDict,
    mesh: Mesh,
    *,
    platform: str | None = None,
    donate: bool = True,
) -> TrainProgram:
    """Model config, optimizer, abstract state, shardings and the jitted init / step functions.

    `platform` picks the 'auto' compute dtype (default: this process's JAX backend; AOT passes
    the target's). Nothing is allocated until init_fn is called.
    """
    rules = partitioning.resolve_rules(config.logical_axis_rules)
    model_config = build_model_config(config, platform)
    optimizer = optimizer_lib.make_optimizer(config)
    graphdef, abstract_state = abstract_train_state(model_config, optimizer)
    state_shardings = train_state_shardings(abstract_state, mesh, rules)
    return TrainProgram(
        config=config,
        mesh=mesh,
        rules=rules,
        model_config=model_config,
        optimizer=optimizer,
        graphdef=graphdef,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=partitioning.batch_sharding(mesh),
        init_fn=make_init_fn(model_config, optimizer, state_shardings),
        init_from_params_fn=make_state_from_params_fn(optimizer, state_shardings),
        train_step=make_train_step(
            config, graphdef, mesh, state_shardings, optimizer, rules, donate=donate
        ),
    )
