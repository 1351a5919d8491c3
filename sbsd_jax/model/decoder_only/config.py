"""Decoder-only shapes and switches: one frozen dataclass covering Llama 3.x, Qwen2.5, Qwen3,
Phi-3, Gemma 2 and Gemma 3, plus the published checkpoint sizes by name.

Each architecture is a set of switches on one transformer (HF name in brackets):
  llama   RMSNorm, SwiGLU, rotary ('default' or 'llama3' scaling), GQA
  qwen2   + bias on q/k/v                                    [attention bias, no o bias]
  qwen3   + RMSNorm on each query/key head (QK-norm)         [q_norm, k_norm]
  phi3    fused qkv and gate_up in HF files only; 'longrope' scaling, partial rotary, all
          layers sliding when sliding_window is set
  gemma2  Gemma RMSNorm (x * (1 + w)), GeGLU, embeddings x sqrt(d_model), norms after attention
          and MLP too, attention and final logit soft-capping, alternating sliding layers,
          scale query_pre_attn_scalar**-0.5
  gemma3  gemma2 without attention soft-capping, + QK-norm, a sliding pattern (5 local : 1
          global) and its own rotary base for local layers
The named sizes are exactly those of the released checkpoints, so a config built here loads
their weights without reshaping (their parameter counts are checked in the tests).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

from sbsd_jax.model.config import (
    REMAT_POLICIES,
    reject_unknown_fields,
    require_one_of,
    require_positive,
)

Architecture = Literal["llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"]
ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")
RopeType = Literal["default", "linear", "llama3", "longrope"]
ROPE_TYPES: tuple[str, ...] = ("default", "linear", "llama3", "longrope")
Activation = Literal["silu", "gelu_tanh"]
LayerType = Literal["full", "sliding"]


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding frequencies (HF `rope_parameters` of one layer type).

    'linear' divides every frequency by `factor`; 'llama3' divides the low frequencies by
    `factor` and blends the middle band (low/high_freq_factor, original_max_position_embeddings);
    'longrope' divides frequency i by short_factor[i] (long_factor[i] once a sequence is longer
    than original_max_position_embeddings) and scales cos/sin by `attention_factor`.
    """

    theta: float = 10_000.0
    rope_type: RopeType = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 0
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float | None = None
    partial_rotary_factor: float = 1.0

    def __post_init__(self) -> None:
        require_one_of(self, "rope_type", ROPE_TYPES)
        if self.theta <= 0:
            raise ValueError(f"RopeConfig.theta must be positive, got {self.theta}")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                "RopeConfig.partial_rotary_factor must be in (0, 1], "
                f"got {self.partial_rotary_factor}"
            )
        needs_original = self.rope_type in ("llama3", "longrope")
        if needs_original and self.original_max_position_embeddings <= 0:
            raise ValueError(
                f"RopeConfig: rope_type={self.rope_type!r} needs original_max_position_embeddings"
            )
        if self.rope_type == "longrope" and not (self.short_factor and self.long_factor):
            raise ValueError("RopeConfig: rope_type='longrope' needs short_factor and long_factor")


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Architecture and numerics of a decoder-only transformer.

    `layer_types` gives each layer 'full' or 'sliding' attention (empty: all full); sliding
    layers see the `sliding_window` most recent tokens (the query included) and rotate with
    `local_rope` when it is set (Gemma 3), else with `rope`.
    """

    architecture: Architecture = "llama"
    vocab_size: int = 128_256
    d_model: int = 2048
    num_layers: int = 16
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 64
    d_ff: int = 8192
    activation: Activation = "silu"
    rms_norm_eps: float = 1e-5
    gemma_norm: bool = False
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm: bool = False
    post_norms: bool = False
    scale_embeddings: bool = False
    tie_word_embeddings: bool = False
    query_pre_attn_scalar: float | None = None
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[LayerType, ...] = ()
    rope: RopeConfig = RopeConfig()
    local_rope: RopeConfig | None = None
    max_position_embeddings: int = 131_072
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = False

    def __post_init__(self) -> None:
        require_one_of(self, "architecture", ARCHITECTURES)
        if self.activation not in ("silu", "gelu_tanh"):
            raise ValueError(
                f"DecoderConfig.activation must be 'silu' or 'gelu_tanh', got {self.activation!r}"
            )
        require_one_of(self, "remat_policy", REMAT_POLICIES)
        require_positive(
            self,
            (
                "vocab_size",
                "d_model",
                "num_layers",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "d_ff",
            ),
        )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"DecoderConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.layer_types and len(self.layer_types) != self.num_layers:
            raise ValueError(
                f"DecoderConfig.layer_types has {len(self.layer_types)} entries for "
                f"{self.num_layers} layers"
            )
        if any(kind not in ("full", "sliding") for kind in self.layer_types):
            raise ValueError(
                "DecoderConfig.layer_types entries must be 'full' or 'sliding', "
                f"got {self.layer_types}"
            )
        if "sliding" in self.layer_types and not self.sliding_window:
            raise ValueError("DecoderConfig: sliding layers need a positive sliding_window")
        if self.sliding_window is not None and self.sliding_window <= 0:
            raise ValueError(
                f"DecoderConfig.sliding_window must be positive or None, got {self.sliding_window}"
            )
        rotary = int(self.head_dim * self.rope.partial_rotary_factor)
        if rotary % 2:
            raise ValueError(f"DecoderConfig: the rotary width {rotary} must be even")
        for rope in (self.rope, self.local_rope):
            if rope is not None and rope.rope_type == "longrope":
                for name in ("short_factor", "long_factor"):
                    if len(getattr(rope, name)) != rotary // 2:
                        raise ValueError(
                            f"DecoderConfig: rope.{name} has {len(getattr(rope, name))} entries, "
                            f"the rotary width {rotary} needs {rotary // 2}"
                        )

    @property
    def is_sliding(self) -> tuple[bool, ...]:
        """For each layer, whether it uses sliding-window attention."""
        if not self.layer_types:
            return (False,) * self.num_layers
        return tuple(kind == "sliding" for kind in self.layer_types)

    @property
    def attention_scale(self) -> float:
        """Factor on q.k: query_pre_attn_scalar**-0.5 (Gemma) or head_dim**-0.5."""
        return float(self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def replace(self, **overrides: object) -> DecoderConfig:
        return dataclasses.replace(self, **overrides)


# ----------------------------------------------------------------------------- named sizes
# Each family's settings are one base config; a named size is its base with the sizes of the
# released checkpoint's config.json (and the few fields that differ within the family).


class _Sizes(NamedTuple):
    """The widths and depths that tell a family's published checkpoints apart."""

    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int


def _sized(base: DecoderConfig, sizes: _Sizes, **fields: object) -> DecoderConfig:
    return base.replace(**sizes._asdict(), **fields)


def _alternating(num_layers: int, period: int) -> tuple[LayerType, ...]:
    """HF's pattern: every `period`-th layer (1-based) global, the others sliding."""
    return tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(num_layers))


_LLAMA_3_2 = DecoderConfig(
    architecture="llama",
    vocab_size=128_256,
    tie_word_embeddings=True,
    rope=RopeConfig(
        theta=500_000.0,
        rope_type="llama3",
        factor=32.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=8192,
    ),
    pad_token_id=128_001,
    bos_token_id=128_000,
    eos_token_ids=(128_001,),
)
_QWEN = DecoderConfig(
    architecture="qwen2",
    vocab_size=151_936,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    rope=RopeConfig(theta=1_000_000.0),
    pad_token_id=151_643,
    bos_token_id=151_643,
    eos_token_ids=(151_643,),
)
_QWEN2_5 = _QWEN.replace(qkv_bias=True, max_position_embeddings=32_768)
_QWEN3 = _QWEN.replace(architecture="qwen3", qk_norm=True, max_position_embeddings=40_960)
_PHI3 = DecoderConfig(
    architecture="phi3",
    vocab_size=32_064,
    rms_norm_eps=1e-5,
    pad_token_id=32_000,
    bos_token_id=1,
    eos_token_ids=(32_000,),
)
_GEMMA = DecoderConfig(
    architecture="gemma2",
    activation="gelu_tanh",
    rms_norm_eps=1e-6,
    gemma_norm=True,
    post_norms=True,
    scale_embeddings=True,
    tie_word_embeddings=True,
    query_pre_attn_scalar=256,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_ids=(1,),
)
_GEMMA_2 = _GEMMA.replace(
    vocab_size=256_000,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    max_position_embeddings=8192,
)
_GEMMA_3 = _GEMMA.replace(
    architecture="gemma3",
    vocab_size=262_144,
    qk_norm=True,
    rope=RopeConfig(theta=1_000_000.0),
    local_rope=RopeConfig(theta=10_000.0),
    max_position_embeddings=32_768,
)

_CONFIGS: dict[str, DecoderConfig] = {
    # meta-llama/Llama-3.2-1B, -3B
    "llama_3_2_1b": _sized(_LLAMA_3_2, _Sizes(2048, 16, 32, 8, 64, 8192)),
    "llama_3_2_3b": _sized(_LLAMA_3_2, _Sizes(3072, 28, 24, 8, 128, 8192)),
    # Qwen/Qwen2.5-0.5B, -1.5B
    "qwen2_5_0_5b": _sized(_QWEN2_5, _Sizes(896, 24, 14, 2, 64, 4864)),
    "qwen2_5_1_5b": _sized(_QWEN2_5, _Sizes(1536, 28, 12, 2, 128, 8960)),
    # Qwen/Qwen3-0.6B
    "qwen3_0_6b": _sized(_QWEN3, _Sizes(1024, 28, 16, 8, 128, 3072)),
    # microsoft/Phi-3-mini-4k-instruct (the 128k variant adds longrope factors: import it)
    "phi_3_mini_4k": _sized(
        _PHI3,
        _Sizes(3072, 32, 32, 32, 96, 8192),
        sliding_window=2047,
        layer_types=("sliding",) * 32,
        max_position_embeddings=4096,
    ),
    # google/gemma-2-2b
    "gemma_2_2b": _sized(
        _GEMMA_2,
        _Sizes(2304, 26, 8, 4, 256, 9216),
        sliding_window=4096,
        layer_types=_alternating(26, 2),
    ),
    # google/gemma-3-1b-pt
    "gemma_3_1b": _sized(
        _GEMMA_3,
        _Sizes(1152, 26, 4, 1, 256, 6912),
        sliding_window=512,
        layer_types=_alternating(26, 6),
    ),
}

# Tiny shapes for smoke runs (each family's full vocabulary, so its real tokenizer fits).
_TINY = _Sizes(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, d_ff=128)
_CONFIGS.update(
    {
        "llama_tiny": _sized(_CONFIGS["llama_3_2_1b"], _TINY),
        "qwen2_5_tiny": _sized(_CONFIGS["qwen2_5_0_5b"], _TINY),
        "qwen3_tiny": _sized(_CONFIGS["qwen3_0_6b"], _TINY),
        "phi_3_tiny": _sized(_CONFIGS["phi_3_mini_4k"], _TINY, layer_types=("sliding",) * 2),
        "gemma_2_tiny": _sized(_CONFIGS["gemma_2_2b"], _TINY, layer_types=_alternating(2, 2)),
        "gemma_3_tiny": _sized(_CONFIGS["gemma_3_1b"], _TINY, layer_types=_alternating(2, 2)),
    }
)

MODEL_NAMES: tuple[str, ...] = tuple(_CONFIGS)

# The released Hugging Face checkpoint of each named size.
HUB_CHECKPOINTS: dict[str, str] = {
    "llama_3_2_1b": "meta-llama/Llama-3.2-1B",
    "llama_3_2_3b": "meta-llama/Llama-3.2-3B",
    "qwen2_5_0_5b": "Qwen/Qwen2.5-0.5B",
    "qwen2_5_1_5b": "Qwen/Qwen2.5-1.5B",
    "qwen3_0_6b": "Qwen/Qwen3-0.6B",
    "phi_3_mini_4k": "microsoft/Phi-3-mini-4k-instruct",
    "gemma_2_2b": "google/gemma-2-2b",
    "gemma_3_1b": "google/gemma-3-1b-pt",
}


def get_decoder_config(name: str, **overrides: object) -> DecoderConfig:
    """Config of a named size with field overrides (e.g. dtype='bfloat16', scan_layers=True)."""
    if name not in _CONFIGS:
        raise ValueError(
            f"Unknown decoder-only model name {name!r}; known names: {', '.join(MODEL_NAMES)}"
        )
    reject_unknown_fields(DecoderConfig, overrides)
    config = _CONFIGS[name]
    return config.replace(**overrides) if overrides else config
