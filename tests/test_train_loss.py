"""The multi-task loss: alpha * mean label-token loss + (1 - alpha) * mean rationale-token loss,
each mean over that task's own non-pad tokens, checked against a hand computation."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from sbsd_jax.data.features import TASK_LABEL, TASK_RATIONALE
from sbsd_jax.train import loss as loss_lib

L, R = TASK_LABEL, TASK_RATIONALE
VOCAB = 7


def _batch() -> dict[str, np.ndarray]:
    """Three target rows of length 6:
    row 0 packed: a label segment (3 tokens) then a rationale segment (2 tokens), 1 pad;
    row 1: a label sequence of 2 tokens and 4 pads;
    row 2: a rationale sequence of 5 tokens and 1 pad.
    So 5 label tokens and 7 rationale tokens."""
    targets = np.array([[3, 4, 1, 5, 1, 0], [6, 1, 0, 0, 0, 0], [2, 3, 4, 5, 1, 0]], np.int32)
    weights = (targets != 0).astype(np.float32)
    task_ids = np.array([[L, L, L, R, R, 0], [L, L, 0, 0, 0, 0], [R, R, R, R, R, 0]], np.int32)
    return {
        "decoder_target_tokens": targets,
        "decoder_loss_weights": weights,
        "decoder_task_ids": task_ids,
    }


def _logits(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 6, VOCAB)).astype(np.float32) * 3


def _hand_token_losses(logits: np.ndarray, batch: dict[str, np.ndarray]) -> dict[int, list[float]]:
    """-log softmax(logits)[target] for every non-pad token, grouped by task, in plain Python."""
    losses: dict[int, list[float]] = {L: [], R: []}
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if batch["decoder_loss_weights"][b, t] == 0:
                continue
            row = [float(v) for v in logits[b, t]]
            log_z = math.log(sum(math.exp(v) for v in row))
            target = int(batch["decoder_target_tokens"][b, t])
            losses[int(batch["decoder_task_ids"][b, t])].append(log_z - row[target])
    return losses


def test_token_cross_entropy_is_negative_log_likelihood_times_weight():
    logits, batch = _logits(), _batch()
    per_token = np.asarray(
        loss_lib.token_cross_entropy(
            jnp.asarray(logits), batch["decoder_target_tokens"], batch["decoder_loss_weights"]
        )
    )
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_probs, batch["decoder_target_tokens"][..., None], -1)[..., 0]
    np.testing.assert_allclose(per_token, expected * batch["decoder_loss_weights"], rtol=1e-5)
    assert per_token[1, 2:].tolist() == [0.0] * 4  # padding contributes nothing


def test_step_by_step_loss_matches_hand_computation_with_padding_and_packing():
    logits, batch = _logits(), _batch()
    alpha = 0.3
    loss, metrics = loss_lib.multitask_loss(jnp.asarray(logits), batch, alpha, "step_by_step")

    hand = _hand_token_losses(logits, batch)
    assert (len(hand[L]), len(hand[R])) == (5, 7)
    label_mean = sum(hand[L]) / 5
    rationale_mean = sum(hand[R]) / 7
    np.testing.assert_allclose(float(metrics["label_loss"]), label_mean, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rationale_loss"]), rationale_mean, rtol=1e-5)
    np.testing.assert_allclose(
        float(loss), alpha * label_mean + (1 - alpha) * rationale_mean, rtol=1e-5
    )
    assert float(metrics["loss"]) == float(loss)
    assert (float(metrics["label_tokens"]), float(metrics["rationale_tokens"])) == (5.0, 7.0)
    # Not the mean over all 12 tokens: each task is averaged over its own tokens.
    assert not np.isclose(float(loss), (sum(hand[L]) + sum(hand[R])) / 12)


@pytest.mark.parametrize("alpha, expected", [(1.0, "label"), (0.0, "rationale")])
def test_alpha_at_the_ends_selects_one_task(alpha, expected):
    loss, metrics = loss_lib.multitask_loss(jnp.asarray(_logits()), _batch(), alpha, "step_by_step")
    np.testing.assert_allclose(float(loss), float(metrics[f"{expected}_loss"]), rtol=1e-6)


@pytest.mark.parametrize("method", ["standard", "cot"])
def test_single_task_methods_use_the_label_loss_only(method):
    logits, batch = _logits(), _batch()
    loss, metrics = loss_lib.multitask_loss(jnp.asarray(logits), batch, 0.5, method)
    hand = _hand_token_losses(logits, batch)
    np.testing.assert_allclose(float(loss), sum(hand[L]) / len(hand[L]), rtol=1e-5)
    assert float(loss) == float(metrics["label_loss"])


def test_global_token_counts_make_micro_batch_losses_add_up_to_the_full_batch_loss():
    """Gradient accumulation: micro-batches with very different token counts per task, each
    scaled by the whole batch's counts, sum to exactly the full-batch loss."""
    logits, batch = _logits(1), _batch()
    full, _ = loss_lib.multitask_loss(jnp.asarray(logits), batch, 0.7, "step_by_step")
    counts = loss_lib.task_token_counts(batch)
    total = 0.0
    for rows in ([0], [1, 2]):  # 3+2 tokens vs 2+5 tokens
        micro = {key: value[rows] for key, value in batch.items()}
        part, _ = loss_lib.multitask_loss(
            jnp.asarray(logits[rows]), micro, 0.7, "step_by_step", token_counts=counts
        )
        total += float(part)
    np.testing.assert_allclose(total, float(full), rtol=1e-6)
    # Averaging per-micro-batch means instead would be wrong:
    naive = []
    for rows in ([0], [1, 2]):
        micro = {key: value[rows] for key, value in batch.items()}
        naive.append(
            float(loss_lib.multitask_loss(jnp.asarray(logits[rows]), micro, 0.7, "step_by_step")[0])
        )
    assert not np.isclose(np.mean(naive), float(full))


def test_a_batch_without_rationale_tokens_has_zero_rationale_loss_not_nan():
    batch = _batch()
    batch["decoder_task_ids"] = np.where(batch["decoder_loss_weights"] > 0, L, 0).astype(np.int32)
    loss, metrics = loss_lib.multitask_loss(jnp.asarray(_logits()), batch, 0.5, "step_by_step")
    assert float(metrics["rationale_loss"]) == 0.0 and float(metrics["rationale_tokens"]) == 0.0
    assert np.isfinite(float(loss))


def test_unknown_method_is_rejected():
    with pytest.raises(ValueError, match="unknown method 'distill'"):
        loss_lib.multitask_loss(jnp.asarray(_logits()), _batch(), 0.5, "distill")
