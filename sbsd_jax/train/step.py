"""The jitted multi-task train step, the sharded state initialiser, and their abstract shapes.

One `jax.jit` per function, with explicit in/out shardings on the mesh and the state donated,
so parameters, optimizer state and batch stay where the rules table puts them and nothing
returns to the host inside a step. Both tasks of a batch (label and rationale sequences, padded
or packed) go through a single forward/backward pass; `loss.multitask_loss` splits the token
losses by `decoder_task_ids`. The model comes from its ModelSpec (any registered family), the
batch follows the family's contract of data/features.py (LAYOUT_BATCH_KEYS: the T5 batch, or
decoder-only causal-LM rows).

Typical use (what sbsd_jax.train.loop does with a RunSpec `spec`):

    mesh = mesh_lib.make_mesh(spec.mesh)
    program = build_train_program(spec.model, spec.optimizer, spec.step, mesh, spec.mesh.rules)
    state = program.init_fn(jax.random.key(spec.step.seed))       # sharded on the mesh
    batch = partitioning.host_local_to_global(numpy_batch, mesh)
    state, metrics = program.train_step(state, batch)              # metrics stay on device
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from sbsd_jax.data.features import LAYOUT_BATCH_KEYS
from sbsd_jax.model import sharding as model_sharding
from sbsd_jax.model.spec import ModelSpec
from sbsd_jax.settings.spec import OptimizerSpec, StepSpec
from sbsd_jax.train import loss as loss_lib
from sbsd_jax.train import optimizer as optimizer_lib
from sbsd_jax.train import partitioning
from sbsd_jax.train.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
TrainStepFn = Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
LossFn = Callable[..., tuple[jax.Array, Metrics]]


# Folded into the init key for the LoRA adapters' own draws (the base keeps the plain draws,
# so a LoRA run starts from the same base as full fine-tuning from the same seed).
_ADAPTER_KEY = 1


def _adapted(model: ModelSpec, module: nnx.Module, key: jax.Array) -> nnx.Module:
    """`module` with LoRA / QLoRA adapters on it (model.lora; none without)."""
    if model.lora is not None:
        from sbsd_jax.model.lora import apply_lora

        rngs = nnx.Rngs(params=jax.random.fold_in(key, _ADAPTER_KEY))
        apply_lora(module, model.lora, rngs=rngs)
    return module


def _split(model: ModelSpec, module: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, Any]:
    """(graphdef, trained parameters, frozen rest): all nnx.Params and no frozen part for full
    training; with LoRA the adapters, and the (quantised) base frozen."""
    if model.lora is None:
        graphdef, params = nnx.split(module, nnx.Param)
        return graphdef, params, None
    from sbsd_jax.model.lora import split_adapters

    return split_adapters(module)


def _init_state_fn(
    model: ModelSpec, model_config: Any, optimizer: optax.GradientTransformation
) -> tuple[Callable[..., tuple[TrainState, Any]], list[nnx.GraphDef]]:
    """Un-jitted functions key -> (TrainState, frozen) and (plain params, key) -> the same, and a
    cell that receives the (adapted) model's graphdef."""
    graphdef_cell: list[nnx.GraphDef] = []

    def state_of(module: nnx.Module) -> tuple[TrainState, Any]:
        graphdef, params, frozen = _split(model, module)
        graphdef_cell[:] = [graphdef]
        state = TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params)
        )
        return state, frozen

    def init(key: jax.Array, params: nnx.State | None = None) -> tuple[TrainState, Any]:
        if params is None:
            module = model.build(model_config, nnx.Rngs(params=key))
        else:
            module = nnx.merge(_plain_graphdef(model, model_config), params)
        return state_of(_adapted(model, module, key))

    return init, graphdef_cell


def _plain_graphdef(model: ModelSpec, model_config: Any) -> nnx.GraphDef:
    """The un-adapted model's graphdef (what evaluation, export and pretrained params use)."""
    abstract = nnx.eval_shape(lambda: model.build(model_config, nnx.Rngs(params=0)))
    return nnx.split(abstract, nnx.Param)[0]


def abstract_train_state(
    model: ModelSpec, model_config: Any, optimizer: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState]:
    """(graphdef, TrainState of ShapeDtypeStructs) without allocating anything.

    Used to derive shardings, to AOT-compile for hardware we do not have, and as the Orbax
    restore target (attach shardings with `with_shardings`). With LoRA the state holds the
    adapters; `abstract_frozen` gives the frozen base.
    """
    graphdef, abstract, _ = _abstract(model, model_config, optimizer)
    return graphdef, abstract


def _abstract(
    model: ModelSpec, model_config: Any, optimizer: optax.GradientTransformation
) -> tuple[nnx.GraphDef, TrainState, Any]:
    init, graphdef_cell = _init_state_fn(model, model_config, optimizer)
    abstract, frozen = jax.eval_shape(init, jax.random.key(0))
    return graphdef_cell[0], abstract, frozen


def with_shardings(abstract_state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that also say where each array lives (Orbax restore / AOT lowering)."""
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        abstract_state,
        shardings,
    )


def make_init_fn(
    model: ModelSpec,
    model_config: Any,
    optimizer: optax.GradientTransformation,
    state_shardings: TrainState,
) -> Callable[[jax.Array], TrainState]:
    """A jitted key -> TrainState that creates every array directly in its shard.

    Nothing is materialised whole on one device, so an XXL student starts on a pod slice.
    `key` is a typed key (jax.random.key(seed)). With LoRA the state holds the adapters.
    """
    init, _ = _init_state_fn(model, model_config, optimizer)
    return jax.jit(lambda key: init(key)[0], out_shardings=state_shardings)


def make_state_from_params_fn(
    model: ModelSpec,
    model_config: Any,
    optimizer: optax.GradientTransformation,
    state_shardings: TrainState,
    seed: int,
) -> Callable[[nnx.State], TrainState]:
    """A jitted params -> fresh TrainState (step 0, new optimizer state), for pretrained starts.

    `params` is an nnx.State of the plain model's Params (e.g. from
    sbsd_jax.model.hf_checkpoint.load_hf_t5); the result is sharded like `state_shardings`.
    With LoRA the params become the frozen base and key(seed) draws the adapters.
    """
    init, _ = _init_state_fn(model, model_config, optimizer)
    key = jax.random.key(seed)
    return jax.jit(lambda params: init(key, params)[0], out_shardings=state_shardings)


@dataclasses.dataclass(frozen=True)
class FrozenBase:
    """A LoRA student's frozen base: never trained, donated or checkpointed, rebuilt bitwise
    on resume from what made it (the seed, or the pretrained params).

    from_key(key) / from_params(params) -> the frozen nnx.State (quantised for QLoRA), sharded
    like `shardings`; to_model_params(adapters, frozen) -> the merged plain model's params
    (merge_lora), for evaluation and export.
    """

    abstract: Any
    shardings: Any
    from_key: Callable[[jax.Array], Any]
    from_params: Callable[[nnx.State], Any]
    to_model_params: Callable[[nnx.State, Any], nnx.State]


def make_frozen_base(
    model: ModelSpec,
    model_config: Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: model_sharding.LogicalAxisRules,
    seed: int,
) -> FrozenBase:
    """The FrozenBase of a LoRA student (see FrozenBase)."""
    from sbsd_jax.model.lora import merge_lora

    init, _ = _init_state_fn(model, model_config, optimizer)
    graphdef, _, abstract = _abstract(model, model_config, optimizer)
    shardings = model_sharding.tree_shardings(abstract, mesh, rules)
    plain = nnx.eval_shape(lambda: model.build(model_config, nnx.Rngs(params=0)))
    plain_shardings = model_sharding.tree_shardings(nnx.state(plain, nnx.Param), mesh, rules)
    key = jax.random.key(seed)

    def to_model_params(adapters: nnx.State, frozen: Any) -> nnx.State:
        merged = merge_lora(nnx.merge(graphdef, adapters, frozen))
        return nnx.state(merged, nnx.Param)

    return FrozenBase(
        abstract=abstract,
        shardings=shardings,
        from_key=jax.jit(lambda k: init(k)[1], out_shardings=shardings),
        from_params=jax.jit(lambda params: init(key, params)[1], out_shardings=shardings),
        to_model_params=jax.jit(to_model_params, out_shardings=plain_shardings),
    )


def train_state_shardings(
    abstract_state: TrainState, mesh: Mesh, rules: model_sharding.LogicalAxisRules
) -> TrainState:
    """NamedShardings for every array of the state: params by the rules, optimizer state like
    its parameter, scalars replicated."""
    return model_sharding.tree_shardings(abstract_state, mesh, rules)


def _split_microbatches(batch: Batch, num_microbatches: int) -> Batch:
    """[B, ...] -> [num_microbatches, B / num_microbatches, ...], row i going to micro-batch
    i % num_microbatches, so every device keeps its own rows (no resharding)."""

    def split(x: jax.Array) -> jax.Array:
        x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return {key: split(value) for key, value in batch.items()}


def make_loss_fn(model: ModelSpec, graphdef: nnx.GraphDef, alpha: float, method: str) -> LossFn:
    """(params, batch, dropout_key, token_counts, frozen=None) -> (loss, metrics); both tasks,
    one pass. `frozen`: the LoRA base (not differentiated), merged with the adapters `params`."""

    def loss_fn(
        params: nnx.State,
        batch: Batch,
        dropout_key: jax.Array | None,
        token_counts: tuple[jax.Array, jax.Array] | None,
        frozen: Any = None,
    ) -> tuple[jax.Array, Metrics]:
        states = (params,) if frozen is None else (params, frozen)
        logits = model.logits(
            nnx.merge(graphdef, *states),
            batch,
            deterministic=dropout_key is None,
            rngs=None if dropout_key is None else nnx.Rngs(dropout=dropout_key),
        )
        return loss_lib.multitask_loss(logits, batch, alpha, method, token_counts=token_counts)

    return loss_fn


def dropout_key(step: StepSpec, use_dropout: bool, state_step: jax.Array) -> jax.Array | None:
    """fold_in(key(seed, impl=rng_impl), step): a pure function of the step, so a resumed run
    draws the same masks as an uninterrupted one; None (deterministic) without dropout."""
    if not use_dropout:
        return None
    return jax.random.fold_in(jax.random.key(step.seed, impl=step.rng_impl), state_step)


def _accumulated_grads(
    grad_fn: Callable[..., Any],
    params: nnx.State,
    batch: Batch,
    key: jax.Array | None,
    num_micro: int,
    batch_sharding: NamedSharding,
    param_shardings: Any,
) -> tuple[Metrics, Any]:
    """Sums gradients and metrics over micro-batches; each micro-batch loss uses the whole
    batch's per-task token counts (see loss.py), so the update equals the full-batch one."""
    counts = loss_lib.task_token_counts(batch)
    if num_micro == 1:
        (_, metrics), grads = grad_fn(params, batch, key, counts)
        return metrics, grads

    def accumulate(carry, xs):
        grads_sum, metrics_sum = carry
        index, micro = xs
        micro = jax.lax.with_sharding_constraint(micro, batch_sharding)
        micro_key = None if key is None else jax.random.fold_in(key, index)
        (_, metrics), grads = grad_fn(params, micro, micro_key, counts)
        grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
        metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
        return (grads_sum, metrics_sum), None

    zero_grads = jax.lax.with_sharding_constraint(
        jax.tree.map(jnp.zeros_like, params), param_shardings
    )
    zero_metrics = {name: jnp.zeros((), jnp.float32) for name in loss_lib.LOSS_METRICS}
    (grads, metrics), _ = jax.lax.scan(
        accumulate,
        (zero_grads, zero_metrics),
        (jnp.arange(num_micro), _split_microbatches(batch, num_micro)),
    )
    return metrics, grads


def make_train_step(
    step: StepSpec,
    loss_fn: LossFn,
    *,
    use_dropout: bool,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    mesh: Mesh,
    rules: model_sharding.LogicalAxisRules,
    state_shardings: TrainState,
    batch_sharding: NamedSharding,
    donate: bool = True,
    batch_keys: tuple[str, ...] = LAYOUT_BATCH_KEYS["seq2seq"],
    frozen_shardings: Any = None,
) -> TrainStepFn:
    """The jitted (state, batch) -> (new state, metrics); with LoRA (state, batch, frozen).

    - Dropout key: `dropout_key` (fold_in of the step); with dropout_rate 0 no key is made
      and the model runs deterministic.
    - step.grad_accum_steps > 1 scans over micro-batches, summing gradients.
    - Gradients are clipped by global norm inside the optimizer (optimizer.py).
    - Metrics (replicated device scalars): loss.STEP_METRICS, grad_norm before clipping and
      the learning_rate used for this update.
    The batch must hold `batch_keys` (the model family's contract, data.features
    LAYOUT_BATCH_KEYS; extra keys are ignored), split over ('data', 'fsdp'). The activation
    rules are fixed here, so they are part of this jit.
    """
    param_shardings = state_shardings.params
    activations = model_sharding.ActivationSharding(mesh, rules)

    def train_step(
        state: TrainState, batch: Batch, frozen: Any = None
    ) -> tuple[TrainState, Metrics]:
        grad_fn = jax.value_and_grad(functools.partial(loss_fn, frozen=frozen), has_aux=True)
        batch = {key: batch[key] for key in batch_keys}
        key = dropout_key(step, use_dropout, state.step)
        with model_sharding.activation_sharding(activations):
            metrics, grads = _accumulated_grads(
                grad_fn,
                state.params,
                batch,
                key,
                step.grad_accum_steps,
                batch_sharding,
                param_shardings,
            )
        grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics)
        metrics["grad_norm"] = optax.global_norm(grads)
        metrics["learning_rate"] = jnp.asarray(schedule(state.step), jnp.float32)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    if frozen_shardings is None:
        return jax.jit(
            train_step,
            in_shardings=(state_shardings, batch_sharding),
            out_shardings=(state_shardings, partitioning.replicated(mesh)),
            donate_argnums=(0,) if donate else (),
        )
    # LoRA: the frozen base is a third argument with its own shardings, never donated.
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_sharding, frozen_shardings),
        out_shardings=(state_shardings, partitioning.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """Everything the loop needs to train one model on one mesh, built once.

    init_fn(key) -> sharded TrainState; init_from_params_fn(params) -> TrainState for a
    pretrained start; train_step(state, batch, *frozen_args) -> (state, metrics); abstract_state
    (shapes, for Orbax restore together with state_shardings, see `with_shardings`).
    graphdef is the plain model's: `nnx.merge(program.graphdef, program.model_params(
    state.params, frozen))` gives the model back (evaluation, export); `activation_sharding` is
    what a decoder jitted over the same mesh takes (model.decode's static argument).
    frozen: the LoRA base (FrozenBase), None for full training; train_graphdef merges with the
    state's params (and the frozen base) in the step.
    """

    mesh: Mesh
    rules: model_sharding.LogicalAxisRules
    model_spec: ModelSpec
    model_config: Any
    optimizer: optax.GradientTransformation
    graphdef: nnx.GraphDef
    abstract_state: TrainState
    state_shardings: TrainState
    batch_sharding: NamedSharding
    init_fn: Callable[[jax.Array], TrainState]
    init_from_params_fn: Callable[[nnx.State], TrainState]
    train_step: TrainStepFn
    train_graphdef: nnx.GraphDef | None = None
    frozen: FrozenBase | None = None

    @property
    def abstract_state_with_shardings(self) -> TrainState:
        return with_shardings(self.abstract_state, self.state_shardings)

    @property
    def activation_sharding(self) -> model_sharding.ActivationSharding:
        return model_sharding.ActivationSharding(self.mesh, self.rules)

    def model_params(self, params: nnx.State, frozen: Any = None) -> nnx.State:
        """The plain model's params: `params` themselves, or with LoRA the adapters merged
        into the frozen base."""
        if self.frozen is None:
            return params
        return self.frozen.to_model_params(params, frozen)


def build_train_program(
    model: ModelSpec,
    optimizer: OptimizerSpec,
    step: StepSpec,
    mesh: Mesh,
    rules: model_sharding.LogicalAxisRules,
    *,
    platform: str | None = None,
    donate: bool = True,
) -> TrainProgram:
    """Model config, optimizer, abstract state, shardings and the jitted init / step functions.

    `platform` picks the 'auto' compute dtype (default: this process's JAX backend; AOT passes
    the target's). Nothing is allocated until init_fn is called.
    """
    model_config = model.config_for(platform or jax.default_backend())
    transform = optimizer_lib.make_optimizer(optimizer)
    graphdef, abstract_state = abstract_train_state(model, model_config, transform)
    state_shardings = train_state_shardings(abstract_state, mesh, rules)
    batch_sharding = partitioning.batch_sharding(mesh)  # one for the step, the loop and eval
    frozen = None
    if model.lora is not None:
        frozen = make_frozen_base(model, model_config, transform, mesh, rules, step.seed)
    train_step = make_train_step(
        step,
        make_loss_fn(model, graphdef, step.alpha, step.method),
        use_dropout=getattr(model_config, "dropout_rate", 0.0) > 0,
        optimizer=transform,
        schedule=optimizer_lib.make_learning_rate_schedule(optimizer),
        mesh=mesh,
        rules=rules,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        donate=donate,
        batch_keys=LAYOUT_BATCH_KEYS[model.family.batch_layout],
        frozen_shardings=None if frozen is None else frozen.shardings,
    )
    return TrainProgram(
        mesh=mesh,
        rules=rules,
        model_spec=model,
        model_config=model_config,
        optimizer=transform,
        graphdef=graphdef if frozen is None else _plain_graphdef(model, model_config),
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        init_fn=make_init_fn(model, model_config, transform, state_shardings),
        init_from_params_fn=make_state_from_params_fn(
            model, model_config, transform, state_shardings, step.seed
        ),
        train_step=train_step,
        train_graphdef=graphdef,
        frozen=frozen,
    )
