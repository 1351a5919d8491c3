"""Hugging Face config.json <-> DecoderConfig for Llama, Qwen2, Qwen3, Phi-3, Gemma 2, Gemma 3.

Reads both config formats in circulation: transformers 5's `rope_parameters` (per layer type
for Gemma 3) and the older `rope_theta` / `rope_scaling` / `rope_local_base_freq` fields that
the published checkpoints carry. Writes the transformers 5 format. Errors name the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sbsd_jax.model.decoder_only.config import DecoderConfig, LayerType, RopeConfig
from sbsd_jax.model.hf_checkpoint import CheckpointError

_MODEL_TYPES: dict[str, str] = {
    "llama": "llama",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
}
_HF_MODEL_TYPE = {arch: model_type for model_type, arch in _MODEL_TYPES.items()}
_HF_CLASSES: dict[str, str] = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3": "Gemma3ForCausalLM",
}
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh"}
_HF_LAYER_TYPES = {"full_attention": "full", "sliding_attention": "sliding"}


def _traits(*, gemma: bool, qk_norm: bool, **others: Any) -> dict[str, Any]:
    """The norm and embedding switches every architecture fixes (Gemma's norms, post-norms and
    scaled embeddings come together), then those only some fix."""
    return dict(
        gemma_norm=gemma, post_norms=gemma, qk_norm=qk_norm, scale_embeddings=gemma, **others
    )


# What each architecture fixes (export checks a config against it; import sets it).
_TRAITS: dict[str, dict[str, Any]] = {
    "llama": _traits(gemma=False, qk_norm=False),
    "qwen2": _traits(gemma=False, qk_norm=False, qkv_bias=True, out_bias=False),
    "qwen3": _traits(gemma=False, qk_norm=True),
    "phi3": _traits(gemma=False, qk_norm=False, qkv_bias=False, out_bias=False),
    "gemma2": _traits(gemma=True, qk_norm=False),
    "gemma3": _traits(gemma=True, qk_norm=True, attn_logit_softcapping=None),
}


class _Fields:
    """Reads config.json fields, naming the missing or malformed one."""

    def __init__(self, hf_config: Mapping[str, Any], source: str):
        self.hf, self.source = hf_config, source

    def get(self, name: str, default: Any = None, *, required: bool = False) -> Any:
        if required and self.hf.get(name) is None:
            raise CheckpointError(f"{self.source}: missing field {name!r}")
        value = self.hf.get(name)
        return default if value is None else value

    def number(self, name: str, kind: type, default: Any = None, *, required: bool = False) -> Any:
        value = self.get(name, default, required=required)
        if value is None:
            return None
        try:
            return kind(value)
        except (TypeError, ValueError) as error:
            raise CheckpointError(
                f"{self.source}: field {name!r}={value!r} is not a {kind.__name__}"
            ) from error


def _rope(params: Mapping[str, Any], field: str, source: str) -> RopeConfig:
    """One layer type's rope parameters (either format, already merged) -> RopeConfig."""
    rope_type = params.get("rope_type", params.get("type")) or "default"
    rope_type = {"su": "longrope"}.get(rope_type, rope_type)
    if rope_type not in ("default", "linear", "llama3", "longrope"):
        raise CheckpointError(
            f"{source}: {field}.rope_type={rope_type!r} is not supported "
            "(default, linear, llama3, longrope)"
        )
    needed = {
        "linear": ("factor",),
        "llama3": (
            "factor",
            "low_freq_factor",
            "high_freq_factor",
            "original_max_position_embeddings",
        ),
        "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    }.get(rope_type, ())
    for key in needed:
        if params.get(key) is None:
            raise CheckpointError(f"{source}: {field}.{key} is missing for rope_type={rope_type!r}")
    try:
        return RopeConfig(
            theta=float(params.get("rope_theta", 10_000.0)),
            rope_type=rope_type,
            factor=float(params.get("factor") or 1.0),
            low_freq_factor=float(params.get("low_freq_factor") or 1.0),
            high_freq_factor=float(params.get("high_freq_factor") or 4.0),
            original_max_position_embeddings=int(
                params.get("original_max_position_embeddings") or 0
            ),
            short_factor=tuple(float(x) for x in params.get("short_factor") or ()),
            long_factor=tuple(float(x) for x in params.get("long_factor") or ()),
            attention_factor=(
                None
                if params.get("attention_factor") is None
                else float(params["attention_factor"])
            ),
            partial_rotary_factor=float(params.get("partial_rotary_factor") or 1.0),
        )
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {field}: {error}") from error


def _ropes(fields: _Fields, arch: str) -> tuple[RopeConfig, RopeConfig | None]:
    hf, source = fields.hf, fields.source
    parameters = hf.get("rope_parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise CheckpointError(f"{source}: field 'rope_parameters' must be an object")
    legacy = dict(hf.get("rope_scaling") or {})
    if arch == "gemma3":
        if parameters and "full_attention" in parameters:
            full = dict(parameters["full_attention"] or {})
            local = dict(parameters.get("sliding_attention") or {})
        else:
            full = dict(legacy, rope_theta=fields.number("rope_theta", float, 1_000_000.0))
            local = {"rope_theta": fields.number("rope_local_base_freq", float, 10_000.0)}
        full.setdefault("rope_theta", 1_000_000.0)
        local.setdefault("rope_theta", 10_000.0)
        return (
            _rope(full, "rope_parameters.full_attention", source),
            _rope(local, "rope_parameters.sliding_attention", source),
        )
    params = dict(parameters) if parameters else legacy
    params.setdefault("rope_theta", fields.number("rope_theta", float, 10_000.0))
    params.setdefault("partial_rotary_factor", hf.get("partial_rotary_factor"))
    params.setdefault(
        "original_max_position_embeddings", hf.get("original_max_position_embeddings")
    )
    return _rope(params, "rope_parameters", source), None


def _layer_types(
    fields: _Fields, arch: str, num_layers: int, window: int | None
) -> tuple[LayerType, ...]:
    """Each layer's attention, from `layer_types` or the architecture's rule for it."""
    listed = fields.hf.get("layer_types")
    if listed is not None:
        if len(listed) != num_layers or any(kind not in _HF_LAYER_TYPES for kind in listed):
            raise CheckpointError(
                f"{fields.source}: field 'layer_types' must list 'full_attention' or "
                f"'sliding_attention' for each of the {num_layers} layers"
            )
        kinds = tuple(_HF_LAYER_TYPES[kind] for kind in listed)
    elif arch in ("qwen2", "qwen3"):
        first = fields.number("max_window_layers", int, 28)
        kinds = tuple("sliding" if i >= first else "full" for i in range(num_layers))
    elif arch == "phi3":
        kinds = ("sliding",) * num_layers
    elif arch in ("gemma2", "gemma3"):
        period = 2 if arch == "gemma2" else fields.number("sliding_window_pattern", int, 6)
        kinds = tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(num_layers))
    else:
        kinds = ("full",) * num_layers
    if window is None or "sliding" not in kinds:  # transformers ignores them without a window
        return ()
    return kinds


def _window(fields: _Fields, arch: str) -> int | None:
    if arch == "llama":
        return None
    if arch in ("qwen2", "qwen3") and not fields.hf.get("use_sliding_window", False):
        return None
    default = 4096 if arch in ("gemma2", "gemma3") else None
    return fields.number("sliding_window", int, default)


def config_from_hf(
    hf_config: Mapping[str, Any], *, source: str = "config.json", **overrides: Any
) -> DecoderConfig:
    """Our DecoderConfig from a HF config.json dict; errors name the offending field."""
    fields = _Fields(hf_config, source)
    model_type = hf_config.get("model_type")
    if model_type not in _MODEL_TYPES:
        hint = " (use the text-only Gemma3ForCausalLM checkpoint)" if model_type == "gemma3" else ""
        raise CheckpointError(
            f"{source}: model_type={model_type!r} is not a supported decoder-only model "
            f"({', '.join(_MODEL_TYPES)}){hint}"
        )
    arch = _MODEL_TYPES[model_type]
    if fields.get("mlp_bias", False):
        raise CheckpointError(f"{source}: field 'mlp_bias'=true is not supported")
    if fields.get("use_bidirectional_attention", False):
        raise CheckpointError(
            f"{source}: field 'use_bidirectional_attention'=true is not supported"
        )
    activation_field = "hidden_activation" if "hidden_activation" in hf_config else "hidden_act"
    activation = fields.get(activation_field, "silu")
    if activation not in _ACTIVATIONS:
        raise CheckpointError(
            f"{source}: field {activation_field!r}={activation!r} is not supported "
            f"({', '.join(_ACTIVATIONS)})"
        )
    d_model = fields.number("hidden_size", int, required=True)
    num_heads = fields.number("num_attention_heads", int, required=True)
    num_layers = fields.number("num_hidden_layers", int, required=True)
    rope, local_rope = _ropes(fields, arch)
    window = _window(fields, arch)
    gemma = arch in ("gemma2", "gemma3")
    bias = bool(fields.get("attention_bias", False))
    eos = fields.get("eos_token_id", [])
    values: dict[str, Any] = dict(
        architecture=arch,
        vocab_size=fields.number("vocab_size", int, required=True),
        d_model=d_model,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=fields.number("num_key_value_heads", int, num_heads),
        head_dim=fields.number("head_dim", int, d_model // num_heads),
        d_ff=fields.number("intermediate_size", int, required=True),
        activation=_ACTIVATIONS[activation],
        rms_norm_eps=fields.number("rms_norm_eps", float, 1e-6),
        qkv_bias=bias,
        out_bias=bias,
        tie_word_embeddings=bool(fields.get("tie_word_embeddings", gemma)),
        query_pre_attn_scalar=fields.number("query_pre_attn_scalar", float) if gemma else None,
        attn_logit_softcapping=fields.number("attn_logit_softcapping", float),
        final_logit_softcapping=fields.number("final_logit_softcapping", float),
        sliding_window=window,
        layer_types=_layer_types(fields, arch, num_layers, window),
        rope=rope,
        local_rope=local_rope,
        max_position_embeddings=fields.number("max_position_embeddings", int, 131_072),
        pad_token_id=fields.number("pad_token_id", int, 0),
        bos_token_id=fields.number("bos_token_id", int),
        eos_token_ids=tuple(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])),
    )
    values.update(_TRAITS[arch])
    values.update(overrides)
    try:
        return DecoderConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{source}: {error}") from error


# ----------------------------------------------------------------------------- export


def check_architecture(config: DecoderConfig) -> None:
    """A config must have its architecture's fixed traits to be written in that HF format."""
    for name, value in _TRAITS[config.architecture].items():
        if getattr(config, name) != value:
            raise CheckpointError(
                f"DecoderConfig.{name}={getattr(config, name)!r} cannot be written as a "
                f"{config.architecture} checkpoint (which needs {value!r})"
            )
    if config.architecture in ("llama", "qwen3", "gemma2", "gemma3") and (
        config.qkv_bias != config.out_bias
    ):
        raise CheckpointError(
            f"DecoderConfig: a {config.architecture} checkpoint has one attention_bias switch; "
            f"qkv_bias={config.qkv_bias} and out_bias={config.out_bias} differ"
        )
    kinds = set(config.layer_types)
    if config.architecture == "phi3" and len(kinds) > 1:
        raise CheckpointError("DecoderConfig.layer_types: phi3 slides all layers or none")
    if config.local_rope is not None and config.architecture != "gemma3":
        raise CheckpointError(
            f"DecoderConfig.local_rope: only gemma3 checkpoints have one, not {config.architecture}"
        )


def _rope_to_hf(rope: RopeConfig, *, partial: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"rope_type": rope.rope_type, "rope_theta": rope.theta}
    if rope.rope_type in ("linear", "llama3"):
        out["factor"] = rope.factor
    if rope.rope_type == "llama3":
        out.update(
            low_freq_factor=rope.low_freq_factor,
            high_freq_factor=rope.high_freq_factor,
            original_max_position_embeddings=rope.original_max_position_embeddings,
        )
    if rope.rope_type == "longrope":
        out.update(
            short_factor=list(rope.short_factor),
            long_factor=list(rope.long_factor),
            original_max_position_embeddings=rope.original_max_position_embeddings,
        )
        if rope.attention_factor is not None:
            out["attention_factor"] = rope.attention_factor
    if partial or rope.partial_rotary_factor != 1.0:
        out["partial_rotary_factor"] = rope.partial_rotary_factor
    return out


def _int_if_whole(value: float) -> int | float:
    """transformers types query_pre_attn_scalar as int and rejects 256.0."""
    return int(value) if float(value).is_integer() else value


def config_to_hf(config: DecoderConfig) -> dict[str, Any]:
    """config.json in transformers 5's format for the config's architecture."""
    check_architecture(config)
    arch = config.architecture
    eos = list(config.eos_token_ids)
    out: dict[str, Any] = {
        "architectures": [_HF_CLASSES[arch]],
        "model_type": _HF_MODEL_TYPE[arch],
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.d_ff,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act" if arch not in ("gemma2", "gemma3") else "hidden_activation": (
            "silu" if config.activation == "silu" else "gelu_pytorch_tanh"
        ),
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "use_cache": True,
    }
    hf_kinds = [
        "sliding_attention" if sliding else "full_attention" for sliding in config.is_sliding
    ]
    if arch == "gemma3":
        local = config.local_rope or config.rope
        out["rope_parameters"] = {
            "full_attention": _rope_to_hf(config.rope, partial=False),
            "sliding_attention": _rope_to_hf(local, partial=False),
        }
    else:
        out["rope_parameters"] = _rope_to_hf(config.rope, partial=arch == "phi3")
    if arch in ("llama", "qwen3", "gemma2", "gemma3"):
        out["attention_bias"] = config.qkv_bias
    if arch == "llama":
        out["mlp_bias"] = False
    if arch in ("qwen2", "qwen3"):
        sliding = any(config.is_sliding)
        out.update(
            use_sliding_window=sliding,
            sliding_window=config.sliding_window if sliding else None,
            max_window_layers=config.is_sliding.index(True) if sliding else config.num_layers,
            layer_types=hf_kinds,
        )
    if arch == "phi3":
        out["sliding_window"] = config.sliding_window if any(config.is_sliding) else None
        out["original_max_position_embeddings"] = (
            config.rope.original_max_position_embeddings or config.max_position_embeddings
        )
    if arch in ("gemma2", "gemma3"):
        out.update(
            query_pre_attn_scalar=_int_if_whole(config.query_pre_attn_scalar or config.head_dim),
            attn_logit_softcapping=config.attn_logit_softcapping,
            final_logit_softcapping=config.final_logit_softcapping,
            sliding_window=config.sliding_window,
            layer_types=hf_kinds,
        )
    return out
