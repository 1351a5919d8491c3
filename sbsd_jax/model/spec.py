"""Which student to build: a `ModelSpec` and the model families that know how to build one.

A family ("architecture") is the one place that knows its config class, its named sizes and
its NNX module; the train step, the ahead-of-time compile, evaluation and checkpoints ask the
spec for a module and never name T5Config themselves. The encoder-decoder T5 family is
registered here, and so is the decoder-only family (model/decoder_only/family.py: Llama, Qwen,
Gemma, Phi-3 shapes, trained on causal-LM rows); another registers a `ModelFamily` with its own
`make_config` / `build` / `logits`, and `family_of(name)` picks it by config.model.

    spec = ModelSpec(architecture="encoder_decoder", name="t5_v1_1_base", overrides=(),
                     compute_dtype="auto", param_dtype="float32", remat_policy="none",
                     scan_layers=False, init_checkpoint="", lora=None)
    config = spec.config_for("tpu")                      # 'auto' -> bfloat16 there
    model = spec.build(config, nnx.Rngs(params=key))     # parameters carry logical axis names
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
from flax import nnx

from sbsd_jax.model.config import MODEL_NAMES as T5_MODEL_NAMES
from sbsd_jax.model.config import get_model_config
from sbsd_jax.model.decoder_only import family as decoder_only
from sbsd_jax.model.lora import LoraSpec
from sbsd_jax.runtime.compute_dtype import auto_compute_dtype

ENCODER_DECODER = "encoder_decoder"
DECODER_ONLY = decoder_only.ARCHITECTURE
# Batch contracts (data/features.py LAYOUT_BATCH_KEYS; the model layer names them only).
SEQ2SEQ_LAYOUT = "seq2seq"
CAUSAL_LAYOUT = "causal"

Batch = Mapping[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """How one architecture is configured, built and run on a training batch.

    make_config(name, **fields) -> its frozen config; build(config, rngs) -> the NNX module,
    every parameter annotated with logical axis names (model/sharding.py); logits(model,
    batch, deterministic, rngs) -> [rows, target length, vocab] for the batch contract of
    data/features.py; greedy_decode(graphdef, tokens, *, state, max_decode_length,
    activation_sharding) -> output tokens (what evaluation decodes with);
    load_pretrained(path_or_hub_id, param_dtype) -> parameters of a published checkpoint
    (config.init_checkpoint); save_pretrained(params, config, out_dir, *, tokenizer_file,
    byte_vocabulary) writes the student back in that format (config.export_hf_dir).
    batch_layout: which batch contract of data/features.py it trains on (LAYOUT_BATCH_KEYS):
    'seq2seq' (encoder and decoder arrays) or 'causal' (decoder-only rows).
    """

    architecture: str
    model_names: tuple[str, ...]
    make_config: Callable[..., Any]
    build: Callable[[Any, nnx.Rngs], nnx.Module]
    logits: Callable[[nnx.Module, Batch, bool, nnx.Rngs | None], jax.Array]
    greedy_decode: Callable[..., jax.Array]
    load_pretrained: Callable[[str, str], nnx.State]
    save_pretrained: Callable[..., Any]
    batch_layout: str = SEQ2SEQ_LAYOUT

    @property
    def causal(self) -> bool:
        return self.batch_layout == CAUSAL_LAYOUT


def _build_t5(config: Any, rngs: nnx.Rngs) -> nnx.Module:
    from sbsd_jax.model.t5 import T5

    return T5(config, rngs=rngs)


def _t5_logits(
    model: nnx.Module, batch: Batch, deterministic: bool, rngs: nnx.Rngs | None
) -> jax.Array:
    return model(
        batch["encoder_input_tokens"],
        batch["decoder_input_tokens"],
        encoder_segment_ids=batch["encoder_segment_ids"],
        decoder_segment_ids=batch["decoder_segment_ids"],
        encoder_positions=batch["encoder_positions"],
        decoder_positions=batch["decoder_positions"],
        deterministic=deterministic,
        rngs=rngs,
    )


def _t5_greedy_decode(graphdef: nnx.GraphDef, tokens: jax.Array, **kwargs: Any) -> jax.Array:
    from sbsd_jax.model.decode import greedy_decode

    return greedy_decode(graphdef, tokens, **kwargs)


def _load_hf_t5(path_or_hub_id: str, param_dtype: str) -> nnx.State:
    from sbsd_jax.model.hf_checkpoint import load_hf_t5

    _, params, _ = load_hf_t5(path_or_hub_id, dtype=param_dtype)
    return params


def _save_hf_t5(params: Any, config: Any, out_dir: str, **kwargs: Any) -> Any:
    from sbsd_jax.model.hf_checkpoint import save_hf_t5

    return save_hf_t5(params, config, out_dir, **kwargs)


FAMILIES: dict[str, ModelFamily] = {
    ENCODER_DECODER: ModelFamily(
        architecture=ENCODER_DECODER,
        model_names=T5_MODEL_NAMES,
        make_config=get_model_config,
        build=_build_t5,
        logits=_t5_logits,
        greedy_decode=_t5_greedy_decode,
        load_pretrained=_load_hf_t5,
        save_pretrained=_save_hf_t5,
    ),
    DECODER_ONLY: ModelFamily(
        architecture=DECODER_ONLY,
        model_names=decoder_only.MODEL_NAMES,
        make_config=decoder_only.make_config,
        build=decoder_only.build,
        logits=decoder_only.logits,
        greedy_decode=decoder_only.greedy_decode,
        load_pretrained=decoder_only.load_pretrained,
        save_pretrained=decoder_only.save_pretrained,
        batch_layout=CAUSAL_LAYOUT,
    ),
}


def register_family(family: ModelFamily) -> None:
    """Adds an architecture (its model names must not collide with another family's)."""
    taken = {name for other in FAMILIES.values() for name in other.model_names}
    clash = sorted(taken & set(family.model_names))
    if family.architecture in FAMILIES or clash:
        raise ValueError(f"model family {family.architecture!r} clashes: {clash}")
    FAMILIES[family.architecture] = family


def all_model_names() -> tuple[str, ...]:
    return tuple(name for family in FAMILIES.values() for name in family.model_names)


def family_of(model_name: str) -> ModelFamily:
    """The family whose named sizes include `model_name` (ValueError naming the known ones)."""
    for family in FAMILIES.values():
        if model_name in family.model_names:
            return family
    raise ValueError(f"unknown model {model_name!r}; choose one of {', '.join(all_model_names())}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The student: architecture, named size, the config fields to override, and the numerics.

    overrides: (field, value) pairs of config.model_overrides that are set (unset fields take
    the named size's value). lora: train adapters on a frozen (optionally quantised) base.
    compute_dtype 'auto' is resolved per platform by `config_for`, so an ahead-of-time compile
    for a TPU gets the TPU's numerics on a CPU host.
    """

    architecture: str
    name: str
    overrides: tuple[tuple[str, Any], ...]
    compute_dtype: str
    param_dtype: str
    remat_policy: str
    scan_layers: bool
    init_checkpoint: str
    lora: LoraSpec | None  # LoRA / QLoRA adapters (model/lora.py); None: full training

    @property
    def family(self) -> ModelFamily:
        return FAMILIES[self.architecture]

    def named_config(self) -> Any:
        """The named size with the overrides only (no platform numerics): vocabulary size,
        dropout rate, shapes."""
        return self.family.make_config(self.name, **dict(self.overrides))

    def config_for(self, platform: str) -> Any:
        """The config the student runs with on `platform` (JAX's backend name): 'auto' compute
        dtype resolved there, CPU-only numerics (accumulating_dot_vjp) unless overridden."""
        fields = dict(self.overrides)
        dtype = self.compute_dtype
        fields.setdefault("dtype", auto_compute_dtype(platform) if dtype == "auto" else dtype)
        fields.setdefault("accumulating_dot_vjp", platform == "cpu")
        fields.setdefault("param_dtype", self.param_dtype)
        fields.setdefault("remat_policy", self.remat_policy)
        fields.setdefault("scan_layers", bool(self.scan_layers))
        # A family whose config lacks a numerics field (say accumulating_dot_vjp) ignores it.
        known = {field.name for field in dataclasses.fields(self.named_config())}
        fields = {k: v for k, v in fields.items() if k in known or k in dict(self.overrides)}
        return self.family.make_config(self.name, **fields)

    def build(self, config: Any, rngs: nnx.Rngs) -> nnx.Module:
        """The NNX module for `config` (from config_for), parameters drawn from `rngs`."""
        return self.family.build(config, rngs)

    def logits(
        self, model: nnx.Module, batch: Batch, *, deterministic: bool, rngs: nnx.Rngs | None
    ) -> jax.Array:
        return self.family.logits(model, batch, deterministic, rngs)
