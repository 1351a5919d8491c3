"""Hugging Face T5 / T5 v1.1 / FLAN-T5 checkpoints <-> our parameters.

Import reads a local directory (config.json + model.safetensors[.index.json] or
pytorch_model.bin[.index.json], plus spiece.model if present); a hub id goes through
`huggingface_hub.snapshot_download` first. Export writes config.json + model.safetensors (and
copies tokenizer files) that `transformers.T5ForConditionalGeneration.from_pretrained` loads.
The pieces that are not T5's own (safetensors reading and writing, config.json loading, tensor
name and shape checks, unstacked-path <-> nnx.State conversion) are public here and shared with
the decoder-only checkpoints (decoder_only/hf_checkpoint.py).

Layout mapping (torch Linear weights are [out, in]; our kernels are [in, ...out]):
  shared.weight [V, d]                                  -> shared [V, d]
  {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight [buckets, heads]
      -> {enc,dec}oder.relative_position_bias.embedding (once per stack)
  ...block.i.layer.0.SelfAttention.{q,k,v}.weight [h*k, d] -> layers[i].self_attention.* [d, h, k]
  ...block.i.layer.0.SelfAttention.o.weight [d, h*k]       -> layers[i].self_attention.out [h, k, d]
  decoder.block.i.layer.1.EncDecAttention.*              -> layers[i].cross_attention.*
  ...DenseReluDense.{wi,wi_0,wi_1}.weight [f, d] -> mlp.* [d, f];  wo [d, f] -> mlp.wo [f, d]
  ...layer_norm.weight, final_layer_norm.weight          -> *_norm.scale, final_norm.scale
  lm_head.weight [V, d] (v1.1 only)                     -> lm_head [d, V]
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbsd_jax.model.config import T5Config
from sbsd_jax.model.t5 import T5


class CheckpointError(ValueError):
    """A Hugging Face checkpoint does not match what a T5 of its config needs."""


# Tensors that HF writes or accepts but that carry no information for us.
_IGNORED_TENSORS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
_TIED_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_LAYER_AXIS = 2  # where an unstacked path ('encoder', 'layers', i, ...) holds the layer number
_TOKENIZER_FILES = (
    "spiece.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

Path_ = tuple[Any, ...]
TokenizerFiles = str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None
ModelT = TypeVar("ModelT", bound=nnx.Module)
ConfigT = TypeVar("ConfigT")


# ----------------------------------------------------------------------------- config


def config_from_hf(
    hf_config: Mapping[str, Any], *, source: str = "config.json", **overrides: Any
) -> T5Config:
    """Our T5Config from a HF T5 config.json dict; errors name the offending field."""

    def field(name: str, default: Any = None) -> Any:
        if name not in hf_config and default is None:
            raise CheckpointError(f"{source}: missing field {name!r}")
        return hf_config.get(name, default)

    model_type = hf_config.get("model_type", "t5")
    if model_type not in ("t5", "mt5"):
        raise CheckpointError(f"{source}: model_type={model_type!r} is not a T5 model")
    projection = field("feed_forward_proj", "relu")
    if projection not in ("relu", "gated-gelu"):
        raise CheckpointError(
            f"{source}: feed_forward_proj={projection!r} is not supported "
            "(expected 'relu' or 'gated-gelu')"
        )
    # transformers>=5 always writes tie_word_embeddings=true and records the v1.0 rescale in
    # scale_decoder_outputs; older configs say tie_word_embeddings=false for v1.1.
    rescale = hf_config.get("scale_decoder_outputs", hf_config.get("tie_word_embeddings", True))
    num_layers = int(field("num_layers"))
    values = dict(
        vocab_size=int(field("vocab_size")),
        d_model=int(field("d_model")),
        d_kv=int(field("d_kv")),
        d_ff=int(field("d_ff")),
        num_heads=int(field("num_heads")),
        num_encoder_layers=num_layers,
        num_decoder_layers=int(hf_config.get("num_decoder_layers") or num_layers),
        feed_forward=projection,
        tie_word_embeddings=bool(rescale),
        relative_attention_num_buckets=int(field("relative_attention_num_buckets", 32)),
        relative_attention_max_distance=int(field("relative_attention_max_distance", 128)),
        dropout_rate=float(field("dropout_rate", 0.1)),
        layer_norm_epsilon=float(field("layer_norm_epsilon", 1e-6)),
        pad_token_id=int(hf_config.get("pad_token_id") or 0),
        eos_token_id=int(_first(hf_config.get("eos_token_id", 1))),
        decoder_start_token_id=int(hf_config.get("decoder_start_token_id") or 0),
    )
    values.update(overrides)
    return T5Config(**values)


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list | tuple) else value


def config_to_hf(config: T5Config) -> dict[str, Any]:
    """config.json in the format of the published checkpoints (read by transformers 4 and 5)."""
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": config.vocab_size,
        "d_model": config.d_model,
        "d_kv": config.d_kv,
        "d_ff": config.d_ff,
        "num_heads": config.num_heads,
        "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers,
        "feed_forward_proj": config.feed_forward,
        "dense_act_fn": "gelu_new" if config.feed_forward == "gated-gelu" else "relu",
        "is_gated_act": config.feed_forward == "gated-gelu",
        "tie_word_embeddings": config.tie_word_embeddings,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "use_cache": True,
    }


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Mapping:
    hf_name: str
    our_path: Path_  # unstacked layout: ('encoder', 'layers', i, ...)
    to_ours: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray]
    hf_shape: tuple[int, ...]


def _layout(config: T5Config) -> list[_Mapping]:
    d, h, k, f, v = config.d_model, config.num_heads, config.d_kv, config.d_ff, config.vocab_size
    same: Callable[[np.ndarray], np.ndarray] = lambda a: a
    linear_in = lambda a: a.T  # [out, in] <-> [in, out]
    qkv_ours = lambda a: a.T.reshape(d, h, k)
    qkv_hf = lambda a: a.reshape(d, h * k).T
    out_ours = lambda a: a.T.reshape(h, k, d)
    out_hf = lambda a: a.reshape(h * k, d).T

    mappings = [_Mapping("shared.weight", ("shared",), same, same, (v, d))]
    if not config.tie_word_embeddings:
        mappings.append(_Mapping("lm_head.weight", ("lm_head",), linear_in, linear_in, (v, d)))
    for stack in ("encoder", "decoder"):
        num_layers = config.num_encoder_layers if stack == "encoder" else config.num_decoder_layers
        mappings.append(
            _Mapping(
                f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                (stack, "relative_position_bias", "embedding"),
                same,
                same,
                (config.relative_attention_num_buckets, h),
            )
        )
        mappings.append(
            _Mapping(
                f"{stack}.final_layer_norm.weight", (stack, "final_norm", "scale"), same, same, (d,)
            )
        )
        for i in range(num_layers):
            block = f"{stack}.block.{i}.layer"
            ours = (stack, "layers", i)
            attention_layers = [(0, "SelfAttention", "self_attention")]
            if stack == "decoder":
                attention_layers.append((1, "EncDecAttention", "cross_attention"))
            for sub, hf_attention, our_attention in attention_layers:
                for hf_proj, our_proj in (("q", "query"), ("k", "key"), ("v", "value")):
                    mappings.append(
                        _Mapping(
                            f"{block}.{sub}.{hf_attention}.{hf_proj}.weight",
                            (*ours, our_attention, our_proj),
                            qkv_ours,
                            qkv_hf,
                            (h * k, d),
                        )
                    )
                mappings.append(
                    _Mapping(
                        f"{block}.{sub}.{hf_attention}.o.weight",
                        (*ours, our_attention, "out"),
                        out_ours,
                        out_hf,
                        (d, h * k),
                    )
                )
                mappings.append(
                    _Mapping(
                        f"{block}.{sub}.layer_norm.weight",
                        (*ours, f"{our_attention}_norm", "scale"),
                        same,
                        same,
                        (d,),
                    )
                )
            ff = 1 if stack == "encoder" else 2
            inputs = ("wi_0", "wi_1") if config.feed_forward == "gated-gelu" else ("wi",)
            for name in inputs:
                mappings.append(
                    _Mapping(
                        f"{block}.{ff}.DenseReluDense.{name}.weight",
                        (*ours, "mlp", name),
                        linear_in,
                        linear_in,
                        (f, d),
                    )
                )
            mappings.append(
                _Mapping(
                    f"{block}.{ff}.DenseReluDense.wo.weight",
                    (*ours, "mlp", "wo"),
                    linear_in,
                    linear_in,
                    (d, f),
                )
            )
            mappings.append(
                _Mapping(
                    f"{block}.{ff}.layer_norm.weight",
                    (*ours, "mlp_norm", "scale"),
                    same,
                    same,
                    (d,),
                )
            )
    return mappings


# ----------------------------------------------------------------------------- reading


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as numpy (bfloat16 via ml_dtypes, which numpy lacks);
    a damaged file is a CheckpointError naming it."""
    import safetensors.numpy

    try:
        return dict(safetensors.numpy.load_file(str(path)))
    except TypeError:  # bfloat16: parse the (simple, documented) format ourselves
        pass
    except Exception as error:  # SafetensorError (a damaged header or data), OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error
    try:
        return _read_safetensors_by_hand(path)
    except CheckpointError:
        raise
    except Exception as error:  # json / struct / reshape errors on a damaged file
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def _read_safetensors_by_hand(path: Path) -> dict[str, np.ndarray]:
    import ml_dtypes

    dtypes = dict(_SAFETENSORS_DTYPES, BF16=ml_dtypes.bfloat16)
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        data = raw[8 + header_size + start : 8 + header_size + end]
        tensors[name] = np.frombuffer(data, dtype=dtypes[info["dtype"]]).reshape(info["shape"])
    return tensors


def _read_torch_bin(path: Path) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise CheckpointError(
            f"{path}: reading pytorch_model.bin needs torch "
            "(pip install torch), or convert it to model.safetensors"
        ) from error
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return {
        name: (t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy())
        for name, t in state.items()
    }


def read_hf_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of a HF checkpoint directory (single file or sharded with an index)."""
    for weights, index, reader in (
        ("model.safetensors", "model.safetensors.index.json", read_safetensors),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", _read_torch_bin),
    ):
        if (directory / weights).is_file():
            return reader(directory / weights)
        if (directory / index).is_file():
            weight_map = json.loads((directory / index).read_text())["weight_map"]
            tensors: dict[str, np.ndarray] = {}
            for shard in sorted(set(weight_map.values())):
                tensors.update(reader(directory / shard))
            return tensors
    raise CheckpointError(
        f"{directory}: no model.safetensors, pytorch_model.bin or their .index.json found"
    )


def config_from_dir(directory: Path, from_hf: Callable[..., ConfigT], **overrides: Any) -> ConfigT:
    """Our config from a checkpoint directory's config.json, converted by the model family's
    `from_hf` (its config_from_hf) with `overrides`; errors name the file."""
    hf_config = _read_hf_config(directory)
    return from_hf(hf_config, source=str(directory / "config.json"), **overrides)


def _read_hf_config(directory: Path) -> dict[str, Any]:
    """The directory's config.json as a dict; CheckpointError naming the file otherwise."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{directory}: missing config.json")
    try:
        hf_config = json.loads(config_path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_path}: invalid JSON ({error})") from error
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    return hf_config


_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def local_checkpoint_problem(path_or_hub_id: str) -> str | None:
    """What makes a local checkpoint directory unusable, read before the run starts (its
    config.json and which weight files it has; the tensors are checked when loaded); None for
    a usable one or a hub id, which is fetched when the run starts."""
    try:
        directory = _local_checkpoint_dir(path_or_hub_id)
        if directory is None:
            return None
        _read_hf_config(directory)
        if not any((directory / name).is_file() for name in _WEIGHT_FILES):
            return f"{directory}: no {', '.join(_WEIGHT_FILES)} found"
    except CheckpointError as error:
        return str(error)
    return None


def _local_checkpoint_dir(path_or_hub_id: str | os.PathLike[str]) -> Path | None:
    """The local directory `path_or_hub_id` names, None for a hub id (CheckpointError for a
    path that is neither)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: expected a checkpoint directory, got a file")
    text = str(path_or_hub_id)
    if text.startswith(("/", ".", "~")) or text.count("/") != 1:
        raise CheckpointError(
            f"{text}: no such checkpoint directory (and not a hub id like 'google/flan-t5-base')"
        )
    return None


def resolve_checkpoint_dir(path_or_hub_id: str | os.PathLike[str]) -> Path:
    """A local directory as is; otherwise a hub id downloaded by huggingface_hub (needs network)."""
    local = _local_checkpoint_dir(path_or_hub_id)
    if local is not None:
        return local
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            str(path_or_hub_id),
            allow_patterns=[
                "config.json",
                "*.safetensors",
                "*.safetensors.index.json",
                *_TOKENIZER_FILES,
                "generation_config.json",
            ],
        )
    )


def params_from_hf_tensors(
    tensors: Mapping[str, np.ndarray], config: T5Config, *, source: str = "checkpoint"
) -> dict[Path_, np.ndarray]:
    """HF tensors -> our parameters keyed by unstacked path; checks names and shapes."""
    remaining = dict(tensors)
    params: dict[Path_, np.ndarray] = {}
    shared = remaining.get("shared.weight")
    for mapping in _layout(config):
        if mapping.hf_name == "lm_head.weight" and mapping.hf_name not in remaining:
            if shared is None:
                break  # reported below as missing shared.weight
            # transformers>=5 saves an untied-but-unscaled head as tied: lm_head == shared.
            remaining[mapping.hf_name] = shared
        value = take_tensor(
            remaining, mapping.hf_name, mapping.hf_shape, source=source, sizes=_sizes(config)
        )
        params[mapping.our_path] = mapping.to_ours(value)
    for name in _TIED_COPIES:
        if name in remaining:
            copy = remaining.pop(name)
            if shared is not None and not np.array_equal(copy, shared):
                raise CheckpointError(
                    f"{source}: tensor {name!r} differs from 'shared.weight'; "
                    "T5 ties the input embeddings"
                )
    if config.tie_word_embeddings and "lm_head.weight" in remaining:
        head = remaining.pop("lm_head.weight")
        if shared is not None and not np.array_equal(head, shared):
            raise CheckpointError(
                f"{source}: tensor 'lm_head.weight' differs from 'shared.weight' but the config "
                "ties them (tie_word_embeddings / scale_decoder_outputs is true)"
            )
    for name in _IGNORED_TENSORS:
        remaining.pop(name, None)
    reject_unexpected_tensors(remaining, source)
    return params


def _sizes(config: T5Config) -> str:
    """The config fields that a tensor's shape comes from, for errors."""
    return (
        f"d_model={config.d_model}, d_kv={config.d_kv}, d_ff={config.d_ff}, "
        f"num_heads={config.num_heads}, vocab_size={config.vocab_size}"
    )


def take_tensor(
    remaining: dict[str, np.ndarray], name: str, shape: tuple[int, ...], *, source: str, sizes: str
) -> np.ndarray:
    """Pops tensor `name` from `remaining`, checking it is there and has `shape`; the error for
    a wrong shape quotes `sizes`, the config fields that shape comes from."""
    if name not in remaining:
        raise CheckpointError(f"{source}: missing tensor {name!r}")
    value = np.asarray(remaining.pop(name))
    if tuple(value.shape) != shape:
        raise CheckpointError(
            f"{source}: tensor {name!r} has shape {tuple(value.shape)}, the config ({sizes}) "
            f"needs {shape}"
        )
    return value


def reject_unexpected_tensors(names: Iterable[str], source: str) -> None:
    """Raises naming (the first ten of) the tensors that no parameter of the config took, so a
    checkpoint of another size or variant is not loaded with weights silently dropped."""
    unexpected = sorted(names)
    if unexpected:
        raise CheckpointError(
            f"{source}: unexpected tensor(s) for this config: "
            f"{', '.join(repr(n) for n in unexpected[:10])}"
            + (f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else "")
        )


# ----------------------------------------------------------------------------- our state
#
# Checkpoint code keys parameters by "unstacked" path, one entry per layer: `layer_axis` is the
# position of the layer number in such a path (T5 ('encoder', 'layers', i, ...): 2; decoder-only
# ('layers', i, ...): 1). A scanned model (config.scan_layers) holds those layers stacked under
# the path without it; an unscanned model's paths are the unstacked ones.


class LayeredConfig(Protocol):
    """What the state conversion reads of a model config (T5Config, DecoderConfig)."""

    @property
    def scan_layers(self) -> bool: ...

    @property
    def param_dtype(self) -> str: ...


def abstract_model(model_class: Callable[..., ModelT], config: Any) -> ModelT:
    """The model's structure and shapes without values: what checkpoint values are put into."""
    return nnx.eval_shape(lambda: model_class(config, rngs=nnx.Rngs(0)))


def _is_layer_path(path: Path_, layer_axis: int) -> bool:
    """Whether a path (stacked or not) is under the layers, with a layer number at layer_axis."""
    return len(path) > layer_axis and path[layer_axis - 1] == "layers"


def state_from_unstacked_params(
    model_class: Callable[..., nnx.Module],
    params: Mapping[Path_, np.ndarray],
    config: LayeredConfig,
    *,
    layer_axis: int,
) -> nnx.State:
    """The nnx.State of Params of `model_class(config)`, filled with unstacked-path values (in
    param_dtype, stacked per layer when scanned); errors name a parameter left without a value
    or given one of the wrong shape."""
    plain: dict[Path_, np.ndarray] = {}
    grouped: dict[Path_, dict[int, np.ndarray]] = {}
    for path, value in params.items():
        if not config.scan_layers or not _is_layer_path(path, layer_axis):
            plain[path] = value
        else:
            target = (*path[:layer_axis], *path[layer_axis + 1 :])
            grouped.setdefault(target, {})[path[layer_axis]] = value
    for target, layers in grouped.items():
        plain[target] = np.stack([layers[i] for i in range(len(layers))])
    dtype = jnp.dtype(config.param_dtype)
    state = nnx.state(abstract_model(model_class, config), nnx.Param)
    flat = []
    for path, variable in nnx.to_flat_state(state):
        name = "/".join(map(str, path))
        if path not in plain:
            raise CheckpointError(f"no checkpoint value for our parameter {name}")
        value = jnp.asarray(plain[path], dtype=dtype)
        if value.shape != variable.shape:
            raise CheckpointError(
                f"parameter {name}: shape {value.shape} != expected {variable.shape}"
            )
        flat.append((path, variable.replace(value)))
    return nnx.from_flat_state(flat)


def unstacked_params_from_state(
    state: nnx.State | nnx.Module | Mapping[str, Any], config: LayeredConfig, *, layer_axis: int
) -> dict[Path_, np.ndarray]:
    """A model, nnx.State or pure dict -> numpy values by unstacked path (a scanned model's
    stacked layers split into one entry per layer)."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state, nnx.Param)
    elif not isinstance(state, nnx.State):
        state = nnx.State(state)
    params: dict[Path_, np.ndarray] = {}
    for path, variable in nnx.to_flat_state(state):
        if isinstance(variable, nnx.Variable):
            variable = variable.get_value()
        value = np.asarray(jax.device_get(variable))
        if config.scan_layers and _is_layer_path(path, layer_axis):
            for i in range(value.shape[0]):
                params[(*path[:layer_axis], i, *path[layer_axis:])] = value[i]
        else:
            params[tuple(path)] = value
    return params


def state_from_params(params: Mapping[Path_, np.ndarray], config: T5Config) -> nnx.State:
    """Fill our model's nnx.State (plain or scanned layout) with unstacked-path parameters."""
    return state_from_unstacked_params(T5, params, config, layer_axis=_LAYER_AXIS)


def params_from_state(
    state: nnx.State | nnx.Module | Mapping[str, Any], config: T5Config
) -> dict[Path_, np.ndarray]:
    """Our (plain or scanned) model, nnx.State or pure dict -> numpy params by unstacked path."""
    return unstacked_params_from_state(state, config, layer_axis=_LAYER_AXIS)


# ----------------------------------------------------------------------------- public API


def load_hf_t5(
    path_or_hub_id: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    **config_overrides: Any,
) -> tuple[T5Config, nnx.State, Path | None]:
    """Import a HF T5 checkpoint: (our config, nnx.State of Params, spiece.model path or None).

    `dtype` is the compute dtype of the returned config; `config_overrides` may set e.g.
    scan_layers, remat_policy or dropout_rate. Build the model with
    `nnx.merge(nnx.graphdef(nnx.eval_shape(lambda: T5(config, rngs=nnx.Rngs(0)))), state)`
    or simply `load_hf_t5_model`.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    config = config_from_dir(
        directory, config_from_hf, dtype=dtype, param_dtype=param_dtype, **config_overrides
    )
    params = params_from_hf_tensors(read_hf_tensors(directory), config, source=str(directory))
    spm = directory / "spiece.model"
    return config, state_from_params(params, config), (spm if spm.is_file() else None)


def load_hf_t5_model(
    path_or_hub_id: str | os.PathLike[str], **kwargs: Any
) -> tuple[T5, Path | None]:
    """Like `load_hf_t5` but returns a ready model (config at `model.config`)."""
    config, state, spm = load_hf_t5(path_or_hub_id, **kwargs)
    graphdef = nnx.graphdef(abstract_model(T5, config))
    return nnx.merge(graphdef, state), spm


def save_hf_t5(
    model_or_params: T5 | nnx.State | Mapping[str, Any],
    config: T5Config,
    out_dir: str | os.PathLike[str],
    *,
    tokenizer_file: TokenizerFiles = None,
    byte_vocabulary: bool = False,
    dtype: str | None = None,
) -> Path:
    """Export to a directory loadable by `T5ForConditionalGeneration.from_pretrained`.

    Writes config.json and model.safetensors (float32 unless `dtype`, e.g. 'bfloat16'), and copies
    tokenizer files: a SentencePiece `*.model` becomes spiece.model, other files keep their name.
    `byte_vocabulary`: the student reads SeqIO byte ids (pad 0, EOS 1, UNK 2, byte b -> b + 3),
    which is ByT5's tokenizer with no extra ids; tokenizer_config.json says so, because without
    it AutoTokenizer would build an empty T5Tokenizer for a `t5` model and encode text as UNK.
    """
    if byte_vocabulary and tokenizer_file is not None:
        raise ValueError("save_hf_t5: a byte vocabulary has no tokenizer file to copy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = params_from_state(model_or_params, config)
    tensors = {}
    for mapping in _layout(config):
        if mapping.our_path not in params:
            raise CheckpointError(
                f"save_hf_t5: parameter {'/'.join(map(str, mapping.our_path))} "
                f"missing for tensor {mapping.hf_name!r}"
            )
        value = np.ascontiguousarray(mapping.to_hf(params[mapping.our_path]))
        if dtype is not None:
            value = value.astype(jnp.dtype(dtype))
        tensors[mapping.hf_name] = value
    write_safetensors(tensors, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
    for file in file_list(tokenizer_file):
        source = Path(file)
        if not source.is_file():
            raise CheckpointError(f"save_hf_t5: tokenizer file {source} does not exist")
        name = "spiece.model" if source.suffix == ".model" else source.name
        shutil.copyfile(source, out / name)
    if byte_vocabulary:
        tokenizer_config = {"tokenizer_class": "ByT5Tokenizer", "extra_ids": 0}
        (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return out


def file_list(files: TokenizerFiles) -> list[str | os.PathLike[str]]:
    """None, one path or several paths, as a list (the forms the export functions accept)."""
    if files is None:
        return []
    if isinstance(files, str | os.PathLike):
        return [files]
    return list(files)


def write_safetensors(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """A .safetensors file (torch's "pt" format) of the tensors, bfloat16 ones included."""
    if any(value.dtype.name == "bfloat16" for value in tensors.values()):
        write_safetensors_raw(tensors, path)
    else:
        import safetensors.numpy

        safetensors.numpy.save_file(dict(tensors), str(path), metadata={"format": "pt"})


def write_safetensors_raw(tensors: Mapping[str, np.ndarray], path: Path) -> None:
    """safetensors writer for bfloat16 (which safetensors.numpy cannot express)."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset, chunks = 0, []
    for name, value in tensors.items():
        data = np.ascontiguousarray(value).tobytes()
        kind = "BF16" if value.dtype.name == "bfloat16" else names[value.dtype]
        header[name] = {
            "dtype": kind,
            "shape": list(value.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        chunks.append(data)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for chunk in chunks:
            f.write(chunk)
