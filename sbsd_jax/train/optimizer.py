"""The optimizer and learning-rate schedule named by the config.

Default = the reference recipe (Hugging Face Seq2SeqTrainer defaults): AdamW(lr 5e-5,
betas 0.9/0.999, eps 1e-8, weight decay 0), linear decay to 0 over the run, no warmup, and
global-norm gradient clipping at 1.0. Adafactor (T5's own optimizer, factored second moments,
so far less optimizer memory for the XXL student) is `--config.optimizer=adafactor`; with its
parameter-scaled updates T5 used a constant 1e-3 (`--config.learning_rate=1e-3
--config.lr_schedule=constant`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax

OPTIMIZERS: tuple[str, ...] = ("adamw", "adafactor")
LR_SCHEDULES: tuple[str, ...] = ("constant", "linear", "linear_warmup_cosine", "rsqrt")


def make_learning_rate_schedule(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Learning rate as a function of the optimizer step (0-based), with linear warmup.

    constant: warmup to the peak, then flat. linear: warmup, then linear decay to
    end_learning_rate_fraction * peak at num_train_steps (HF's get_linear_schedule_with_warmup).
    linear_warmup_cosine: warmup, then cosine decay to the same end. rsqrt: warmup, then
    peak * sqrt(warmup / step) (T5's inverse square root; with no warmup, peak / sqrt(step)).
    """
    peak = float(config.learning_rate)
    warmup = int(config.warmup_steps)
    total = int(config.num_train_steps)
    end = peak * float(config.get("end_learning_rate_fraction", 0.0))
    name = config.lr_schedule
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


def _decay_mask(params: optax.Params) -> optax.Params:
    """Weight decay on matrices only, never on norm scales (HF skips LayerNorm weights)."""
    return jax.tree.map(lambda p: jnp.ndim(p) > 1, params)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Clipping (if grad_clip_norm > 0) followed by the configured optimizer and schedule."""
    schedule = make_learning_rate_schedule(config)
    name = config.optimizer
    if name == "adamw":
        optimizer = optax.adamw(
            schedule,
            b1=float(config.adam_b1),
            b2=float(config.adam_b2),
            eps=float(config.adam_eps),
            weight_decay=float(config.weight_decay),
            mask=_decay_mask,
        )
    elif name == "adafactor":
        optimizer = optax.adafactor(
            schedule,
            weight_decay_rate=float(config.weight_decay) or None,
            weight_decay_mask=_decay_mask,
        )
    else:
        raise ValueError(f"config.optimizer={name!r}: expected one of {OPTIMIZERS}")
    if float(config.grad_clip_norm) > 0:
        return optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), optimizer)
    return optimizer
