"""Model FLOPs by formula (T5 and decoder-only students): a train step and a greedy decode, as
MFU counts them.

A multiply-add is 2 FLOPs; a backward pass is twice its forward (so a train step is 3x the
forward). Counted: every projection, the LM head and the two attention products (q.k and
weights.v, over the full lengths the compiled program computes); not counted: norms, softmax,
activations, dropout, the optimizer (all O(params) or O(tokens), small beside the matmuls).
Used to put XLA's own counts and measured step times next to the model's arithmetic. The
chips' published peaks live here too: MFU is this module's FLOPs over a step time and a peak.
"""

from __future__ import annotations

import dataclasses

from sbsd_jax.model.config import T5Config
from sbsd_jax.model.decoder_only.config import DecoderConfig


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


def causal_lm_flops_per_token(config: DecoderConfig, length: int) -> int:
    """One token of a decoder-only student: q/k/v/o (grouped-query k and v are narrower), the
    gated MLP (SwiGLU / GeGLU: three kernels), attention over the full row (a sliding window
    is a mask: the compiled program still computes every q.k), the LM head."""
    d, query = config.d_model, config.num_heads * config.head_dim
    key_value = config.num_kv_heads * config.head_dim
    per_layer = 2 * (2 * d * query + 2 * d * key_value + 3 * d * config.d_ff)
    per_layer += 4 * length * query
    return config.num_layers * per_layer + 2 * d * config.vocab_size


def causal_lm_train_step_flops(config: DecoderConfig, rows: int, row_length: int) -> int:
    """Forward + backward (3x forward) of one train step on rows x row_length slots. With LoRA
    too: model/lora.py's adapters take their gradient through the full-size kernel's, so the
    base's weight gradients are computed; the adapters' own rank x width FLOPs are left out."""
    return 3 * rows * row_length * causal_lm_flops_per_token(config, row_length)


def train_step_rows(method: str, batch_size: int) -> int:
    """Sequences one optimizer step computes on: step_by_step puts a predict and an explain
    sequence per example in the batch (packed batches hold as many rows). batch_size is the
    global batch of the step: gradient accumulation splits it into micro-batches, it does not
    add rows."""
    return batch_size * (2 if method == "step_by_step" else 1)


def mfu(model_flops: float, step_seconds: float, chips: int, peak_flops_per_chip: float) -> float:
    """Model FLOPs utilisation: the step's model FLOPs (all chips) over what `chips` chips at
    `peak_flops_per_chip` FLOP/s could compute in `step_seconds`."""
    if step_seconds <= 0 or chips <= 0 or peak_flops_per_chip <= 0:
        raise ValueError(
            f"mfu: step_seconds, chips and peak must be positive, got {step_seconds}, {chips}, "
            f"{peak_flops_per_chip}"
        )
    return model_flops / (step_seconds * chips * peak_flops_per_chip)


@dataclasses.dataclass(frozen=True)
class ChipPeak:
    """A chip's published dense bf16 peak and HBM bandwidth (vendor data sheets)."""

    bf16_tflops: float
    hbm_gb_per_s: float


# Per chip (a TPU v4/v5p chip is its two TensorCores together; H100/H200: SXM, dense, no
# sparsity). Sources: Cloud TPU system architecture pages, NVIDIA H100/H200 data sheets.
CHIP_PEAKS: dict[str, ChipPeak] = {
    "v4": ChipPeak(275.0, 1228.0),
    "v5e": ChipPeak(197.0, 819.0),
    "v5p": ChipPeak(459.0, 2765.0),
    "v6e": ChipPeak(918.0, 1640.0),
    "h100": ChipPeak(989.0, 3350.0),
    "h200": ChipPeak(989.0, 4800.0),
}
_KIND_TO_CHIP = {"v4": "v4", "v5 lite": "v5e", "v5e": "v5e", "v5": "v5p", "v5p": "v5p"}
_KIND_TO_CHIP |= {"v6 lite": "v6e", "v6e": "v6e", "h100": "h100", "h200": "h200"}


def chip_for(device_kind: str, topology_name: str = "") -> str | None:
    """CHIP_PEAKS key of libtpu's device_kind ('TPU v5 lite', 'NVIDIA H100 80GB HBM3', ...)
    or of the topology name's prefix; None for a CPU or an unlisted chip."""
    kind = device_kind.lower().removeprefix("tpu").removeprefix("nvidia").strip()
    for name in (kind, kind.split()[0] if kind else "", topology_name.split(":")[0].lower()):
        if name in _KIND_TO_CHIP:
            return _KIND_TO_CHIP[name]
    return None
