"""The multi-task loss of distilling step-by-step, as pure functions of logits and a batch.

loss = alpha * label_loss + (1 - alpha) * rationale_loss, where each task's loss is the mean
token cross-entropy over that task's own non-pad target tokens (`decoder_loss_weights` > 0 and
`decoder_task_ids` == task), exactly like the reference recipe which runs the predict and the
explain batch separately and averages each over its own tokens.

Gradient accumulation keeps that normalisation over the whole global batch: the per-task token
counts depend only on the batch (not on the parameters), so they are computed once for the full
batch (`task_token_counts`) and every micro-batch is scaled by the *global* counts
(`multitask_loss(..., token_counts=global_counts)`). Each micro-batch loss is then a share of
the global loss, and the sum of their gradients equals the gradient of the full-batch loss
(up to float summation order); there is nothing to renormalise after the last micro-batch.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from sbsd_jax.data.features import METHOD_TASKS, TASK_LABEL, TASK_RATIONALE

METHODS: tuple[str, ...] = tuple(METHOD_TASKS)
# What multitask_loss reports (summed over micro-batches by the step), and what the step adds.
LOSS_METRICS: tuple[str, ...] = (
    "loss",
    "label_loss",
    "rationale_loss",
    "label_tokens",
    "rationale_tokens",
)
STEP_METRICS: tuple[str, ...] = (*LOSS_METRICS, "grad_norm", "learning_rate")


def token_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None
) -> jax.Array:
    """Per-token cross-entropy [B, T] in float32, multiplied by `weights` (0 on padding)."""
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)
    loss = log_z - target_logits[..., 0]
    if weights is not None:
        loss = loss * weights.astype(jnp.float32)
    return loss


def task_token_counts(batch: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """(label tokens, rationale tokens): sums of the loss weights per task, float32 scalars."""
    weights = jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
    task_ids = jnp.asarray(batch["decoder_task_ids"])
    label = jnp.sum(weights * (task_ids == TASK_LABEL))
    rationale = jnp.sum(weights * (task_ids == TASK_RATIONALE))
    return label, rationale


def multitask_loss(
    logits: jax.Array,
    batch: Mapping[str, jax.Array],
    alpha: float,
    method: str,
    token_counts: tuple[jax.Array, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The scalar training loss and its parts for one (micro-)batch.

    `token_counts` are the per-task denominators; None means this batch's own counts. Pass
    the global batch's counts for a micro-batch of gradient accumulation (see module doc).
    For 'standard' and 'cot' only the label task contributes (every target is a label task).
    Metrics: label_loss / rationale_loss are this batch's share of the per-task mean (the full
    mean when `token_counts` is None), label_tokens / rationale_tokens this batch's counts.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    weights = jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
    task_ids = jnp.asarray(batch["decoder_task_ids"])
    per_token = token_cross_entropy(logits, batch["decoder_target_tokens"], weights)
    label_sum = jnp.sum(per_token * (task_ids == TASK_LABEL))
    rationale_sum = jnp.sum(per_token * (task_ids == TASK_RATIONALE))
    label_tokens, rationale_tokens = task_token_counts(batch)
    label_count, rationale_count = (
        (label_tokens, rationale_tokens) if token_counts is None else token_counts
    )
    label_loss = label_sum / jnp.maximum(label_count, 1.0)
    rationale_loss = rationale_sum / jnp.maximum(rationale_count, 1.0)
    if method == "step_by_step":
        loss = alpha * label_loss + (1.0 - alpha) * rationale_loss
    else:
        loss = label_loss
    values = (loss, label_loss, rationale_loss, label_tokens, rationale_tokens)
    return loss, dict(zip(LOSS_METRICS, values, strict=True))
