"""Model FLOPs of T5 by formula: a train step and a greedy decode, as MFU counts them.

A multiply-add is 2 FLOPs; a backward pass is twice its forward (so a train step is 3x the
forward). Counted: every projection, the LM head and the two attention products (q.k and
weights.v, over the full lengths the compiled program computes); not counted: norms, softmax,
activations, dropout, the optimizer (all O(params) or O(tokens), small beside the matmuls).
Used to put XLA's own counts and measured step times next to the model's arithmetic.
"""

from __future__ import annotations

from sbsd_jax.model.config import T5Config


def _mlp_matmuls(config: T5Config) -> int:
    """Kernels of one MLP: wi_0, wi_1, wo (gated-GELU) or wi, wo (ReLU)."""
    return 3 if config.feed_forward == "gated-gelu" else 2


def encoder_flops_per_token(config: T5Config, source_length: int) -> int:
    """One encoder token through every encoder layer (self-attention over source_length)."""
    d, inner = config.d_model, config.inner_dim
    per_layer = 2 * (4 * d * inner + _mlp_matmuls(config) * d * config.d_ff)
    per_layer += 4 * source_length * inner  # q.k and weights.v
    return config.num_encoder_layers * per_layer


def cross_kv_flops_per_source_token(config: T5Config) -> int:
    """Cross-attention keys and values of one encoder token, for every decoder layer."""
    return config.num_decoder_layers * 2 * 2 * config.d_model * config.inner_dim


def decoder_flops_per_token(config: T5Config, self_length: int, source_length: int) -> int:
    """One decoder token: self q/k/v/o, cross q/o, MLP, both attentions, the LM head."""
    d, inner = config.d_model, config.inner_dim
    per_layer = 2 * (6 * d * inner + _mlp_matmuls(config) * d * config.d_ff)
    per_layer += 4 * (self_length + source_length) * inner
    return config.num_decoder_layers * per_layer + 2 * d * config.vocab_size


def forward_flops(config: T5Config, rows: int, source_length: int, target_length: int) -> int:
    """Teacher-forced forward over rows x (source, target) tokens."""
    encoder = source_length * (
        encoder_flops_per_token(config, source_length) + cross_kv_flops_per_source_token(config)
    )
    decoder = target_length * decoder_flops_per_token(config, target_length, source_length)
    return rows * (encoder + decoder)


def train_step_flops(config: T5Config, rows: int, source_length: int, target_length: int) -> int:
    """Forward + backward (3x forward) of one train step on rows x (source, target)."""
    return 3 * forward_flops(config, rows, source_length, target_length)


def decode_flops(config: T5Config, batch: int, source_length: int, steps: int) -> int:
    """Greedy decoding of `steps` tokens for `batch` rows with a KV cache.

    The encoder and the cross-attention keys/values once, then one decoder token per step
    whose self-attention covers the step's prefix (what a cache must compute at least).
    """
    once = source_length * (
        encoder_flops_per_token(config, source_length) + cross_kv_flops_per_source_token(config)
    )
    per_steps = sum(
        decoder_flops_per_token(config, step + 1, source_length) for step in range(steps)
    )
    return batch * (once + per_steps)
