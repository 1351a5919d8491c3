"""T5 shapes and switches: one frozen dataclass, plus the published checkpoint sizes by name.

The sizes are exactly those of the released checkpoints (google-t5/t5-*, google/t5-v1_1-*,
google/flan-t5-*), so a config built here can load their weights without reshaping.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Literal

FeedForward = Literal["relu", "gated-gelu"]

REMAT_POLICIES: tuple[str, ...] = (
    "none",
    "full",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
    "nothing_saveable",
    "everything_saveable",
)


# ----------------------------------------------------------------------------- field checks
# Shared by the model configs (T5Config, DecoderConfig), so a bad value fails where it is set,
# with one wording that names the class and field, rather than deep inside the model.


def require_one_of(config: object, field: str, choices: Collection[str]) -> None:
    """Raises ValueError unless the config's `field` is one of `choices`."""
    value = getattr(config, field)
    if value not in choices:
        raise ValueError(f"{type(config).__name__}.{field} must be one of {choices}, got {value!r}")


def require_positive(config: object, fields: Iterable[str]) -> None:
    """Raises ValueError naming the first of the config's `fields` that is not positive."""
    for field in fields:
        value = getattr(config, field)
        if int(value) <= 0:
            raise ValueError(f"{type(config).__name__}.{field} must be positive, got {value}")


def reject_unknown_fields(config_class: type, overrides: Mapping[str, object]) -> None:
    """Raises ValueError naming the overrides that are not fields of the config dataclass."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(config_class)}
    if unknown:
        raise ValueError(
            f"Unknown {config_class.__name__} field(s) in overrides: {sorted(unknown)}"
        )


# ----------------------------------------------------------------------------- T5


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Architecture and numerics of a T5 encoder-decoder.

    `tie_word_embeddings=True` is T5 v1.0: the LM head reuses the input embedding and the decoder
    output is rescaled by d_model**-0.5 first. `False` is v1.1/FLAN-T5: a separate lm_head and
    no rescale.
    """

    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    feed_forward: FeedForward = "relu"
    tie_word_embeddings: bool = True
    vocab_size: int = 32128
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat_policy: str = "none"
    scan_layers: bool = False
    # bf16 x bf16 dots with float32 accumulation in the backward pass too (t5.einsum): those
    # dots run 2-3x faster on XLA:CPU (a bf16 step 1.4x); the trainer turns it on for CPU only.
    accumulating_dot_vjp: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0

    def __post_init__(self) -> None:
        if self.feed_forward not in ("relu", "gated-gelu"):
            raise ValueError(
                f"T5Config.feed_forward must be 'relu' or 'gated-gelu', got {self.feed_forward!r}"
            )
        require_one_of(self, "remat_policy", REMAT_POLICIES)
        require_positive(
            self,
            (
                "d_model",
                "d_kv",
                "d_ff",
                "num_heads",
                "num_encoder_layers",
                "num_decoder_layers",
                "vocab_size",
                "relative_attention_num_buckets",
            ),
        )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @property
    def inner_dim(self) -> int:
        """Width of the concatenated attention heads (num_heads * d_kv)."""
        return self.num_heads * self.d_kv

    def replace(self, **overrides: object) -> T5Config:
        return dataclasses.replace(self, **overrides)


def _v1_0(d_model: int, d_ff: int, num_heads: int, d_kv: int, layers: int) -> T5Config:
    return T5Config(
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_heads=num_heads,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        feed_forward="relu",
        tie_word_embeddings=True,
    )


def _v1_1(d_model: int, d_ff: int, num_heads: int, d_kv: int, layers: int) -> T5Config:
    return T5Config(
        d_model=d_model,
        d_kv=d_kv,
        d_ff=d_ff,
        num_heads=num_heads,
        num_encoder_layers=layers,
        num_decoder_layers=layers,
        feed_forward="gated-gelu",
        tie_word_embeddings=False,
    )


_V1_1_SHAPES: dict[str, tuple[int, int, int, int, int]] = {
    # size: (d_model, d_ff, num_heads, d_kv, layers) as in google/t5-v1_1-* config.json
    "small": (512, 1024, 6, 64, 8),
    "base": (768, 2048, 12, 64, 12),
    "large": (1024, 2816, 16, 64, 24),
    "xl": (2048, 5120, 32, 64, 24),
    "xxl": (4096, 10240, 64, 64, 24),
}

_CONFIGS: dict[str, T5Config] = {
    "t5_small": _v1_0(512, 2048, 8, 64, 6),
    "t5_base": _v1_0(768, 3072, 12, 64, 12),
    "t5_large": _v1_0(1024, 4096, 16, 64, 24),
    "t5_3b": _v1_0(1024, 16384, 32, 128, 24),
    "t5_11b": _v1_0(1024, 65536, 128, 128, 24),
    **{f"t5_v1_1_{size}": _v1_1(*shape) for size, shape in _V1_1_SHAPES.items()},
    # FLAN-T5 checkpoints are instruction-tuned v1.1 shapes.
    **{f"flan_t5_{size}": _v1_1(*shape) for size, shape in _V1_1_SHAPES.items()},
    # Tiny shapes for tests and smoke runs (full vocabulary so real tokenizers fit).
    "t5_tiny": _v1_0(64, 128, 4, 16, 2),
    "t5_v1_1_tiny": _v1_1(64, 96, 4, 16, 2),
}

_ALIASES: dict[str, str] = {"t5_xl": "t5_3b", "t5_xxl": "t5_11b"}

MODEL_NAMES: tuple[str, ...] = tuple(_CONFIGS) + tuple(_ALIASES)

# The released Hugging Face checkpoint of each named size (what `init_checkpoint` starts from).
HUB_CHECKPOINTS: dict[str, str] = {
    "t5_small": "google-t5/t5-small",
    "t5_base": "google-t5/t5-base",
    "t5_large": "google-t5/t5-large",
    "t5_3b": "google-t5/t5-3b",
    "t5_11b": "google-t5/t5-11b",
    "t5_xl": "google-t5/t5-3b",
    "t5_xxl": "google-t5/t5-11b",
    **{f"t5_v1_1_{size}": f"google/t5-v1_1-{size}" for size in _V1_1_SHAPES},
    **{f"flan_t5_{size}": f"google/flan-t5-{size}" for size in _V1_1_SHAPES},
}


def get_model_config(name: str, **overrides: object) -> T5Config:
    """Config of a named size with field overrides (e.g. dtype='bfloat16', scan_layers=True)."""
    canonical = _ALIASES.get(name, name)
    if canonical not in _CONFIGS:
        raise ValueError(f"Unknown T5 model name {name!r}; known names: {', '.join(MODEL_NAMES)}")
    config = _CONFIGS[canonical]
    reject_unknown_fields(T5Config, overrides)
    return config.replace(**overrides) if overrides else config
