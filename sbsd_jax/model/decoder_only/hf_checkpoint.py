"""Hugging Face Llama / Qwen2 / Qwen3 / Phi-3 / Gemma 2 / Gemma 3 checkpoints <-> our parameters.

Import reads a local directory (config.json + model.safetensors or a sharded
model.safetensors.index.json); a hub id goes through huggingface_hub first. Export writes
config.json + safetensors (sharded with an index past `max_shard_bytes`) that transformers'
AutoModelForCausalLM loads. Errors name the file, tensor or field. Same discipline as the T5
module (model/hf_checkpoint.py), whose hub resolution, error type, safetensors reader/writer
and unstacked-path <-> nnx.State conversion are reused.

Layout (torch Linear weights are [out, in]; our kernels are [in, ...out]):
  model.embed_tokens.weight [V, d]                  -> embedding [V, d]
  lm_head.weight [V, d] (untied only)               -> lm_head [d, V]
  model.norm.weight                                 -> final_norm.scale
  model.layers.i.self_attn.{q,k,v}_proj.weight [h*dh, d] -> layers.i.attention.{query,key,value}
      [d, h, dh]; .bias [h*dh] -> {query,key,value}_bias [h, dh]
  Phi-3: model.layers.i.self_attn.qkv_proj.weight [(H + 2K)*dh, d] -> query, key, value
  model.layers.i.self_attn.o_proj.weight [d, H*dh]  -> attention.out [H, dh, d] (.bias -> out_bias)
  model.layers.i.self_attn.{q,k}_norm.weight        -> attention.{query,key}_norm.scale
  model.layers.i.mlp.{gate,up}_proj.weight [F, d]   -> mlp.{gate,up} [d, F]
  model.layers.i.mlp.down_proj.weight [d, F]        -> mlp.down [F, d]
  Phi-3: model.layers.i.mlp.gate_up_proj.weight [2F, d] (gate rows first) -> mlp.gate, mlp.up
  model.layers.i.input_layernorm.weight             -> attention_norm.scale
  Llama/Qwen/Phi: post_attention_layernorm          -> mlp_norm.scale (the norm before the MLP)
  Gemma: post_attention_layernorm -> post_attention_norm, pre_feedforward_layernorm -> mlp_norm,
         post_feedforward_layernorm -> post_mlp_norm
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbsd_jax.model.decoder_only.config import DecoderConfig
from sbsd_jax.model.decoder_only.hf_config import check_architecture, config_from_hf, config_to_hf
from sbsd_jax.model.decoder_only.transformer import DecoderOnlyLM
from sbsd_jax.model.hf_checkpoint import (
    CheckpointError,
    TokenizerFiles,
    abstract_model,
    config_from_dir,
    file_list,
    read_safetensors,
    reject_unexpected_tensors,
    resolve_checkpoint_dir,
    state_from_unstacked_params,
    take_tensor,
    unstacked_params_from_state,
    write_safetensors,
)

Path_ = tuple[Any, ...]
Arrays = tuple[np.ndarray, ...]
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # buffers some old exports saved
_LAYER_AXIS = 1  # where an unstacked path ('layers', i, ...) holds the layer number


# ----------------------------------------------------------------------------- layout


@dataclasses.dataclass(frozen=True)
class _Mapping:
    """One HF tensor <-> one or more (fused) of our parameters, by unstacked path."""

    hf_name: str
    our_paths: tuple[Path_, ...]
    to_ours: Callable[[np.ndarray], Arrays]
    to_hf: Callable[[Arrays], np.ndarray]
    hf_shape: tuple[int, ...]


def _same(name: str, path: Path_, shape: tuple[int, ...]) -> _Mapping:
    return _Mapping(name, (path,), lambda a: (a,), lambda p: p[0], shape)


def _linear(name: str, path: Path_, ours: tuple[int, ...], hf: tuple[int, ...]) -> _Mapping:
    """torch [out, in] <-> our kernel of `ours` shape ([in, *out] or [*in, out])."""
    return _Mapping(
        name, (path,), lambda a: (a.T.reshape(ours),), lambda p: p[0].reshape(hf[1], hf[0]).T, hf
    )


def _fused(name: str, paths: tuple[Path_, ...], shapes: tuple[tuple[int, ...], ...]) -> _Mapping:
    """A torch [sum(outs), in] tensor whose row blocks are our [in, *out_i] kernels."""
    rows = [int(np.prod(shape[1:])) for shape in shapes]
    d_in = shapes[0][0]

    def to_ours(a: np.ndarray) -> Arrays:
        blocks = np.split(a, np.cumsum(rows)[:-1], axis=0)
        return tuple(b.T.reshape(s) for b, s in zip(blocks, shapes, strict=True))

    def to_hf(parts: Arrays) -> np.ndarray:
        return np.concatenate([p.reshape(d_in, -1).T for p in parts], axis=0)

    return _Mapping(name, paths, to_ours, to_hf, (sum(rows), d_in))


def _attention(config: DecoderConfig, hf: str, ours: Path_) -> list[_Mapping]:
    d, h, k, dh = config.d_model, config.num_heads, config.num_kv_heads, config.head_dim
    shapes = {"query": (d, h, dh), "key": (d, k, dh), "value": (d, k, dh)}
    projections = (("q", "query"), ("k", "key"), ("v", "value"))
    maps = []
    if config.architecture == "phi3":
        maps.append(
            _fused(
                f"{hf}.qkv_proj.weight",
                tuple((*ours, name) for _, name in projections),
                tuple(shapes[name] for _, name in projections),
            )
        )
    else:
        for short, name in projections:
            hf_shape = (shapes[name][1] * dh, d)
            maps.append(_linear(f"{hf}.{short}_proj.weight", (*ours, name), shapes[name], hf_shape))
    if config.qkv_bias:
        for short, name in projections:
            heads = shapes[name][1]
            maps.append(
                _Mapping(
                    f"{hf}.{short}_proj.bias",
                    ((*ours, f"{name}_bias"),),
                    lambda a, s=(heads, dh): (a.reshape(s),),
                    lambda p: p[0].reshape(-1),
                    (heads * dh,),
                )
            )
    maps.append(_linear(f"{hf}.o_proj.weight", (*ours, "out"), (h, dh, d), (d, h * dh)))
    if config.out_bias:
        maps.append(_same(f"{hf}.o_proj.bias", (*ours, "out_bias"), (d,)))
    if config.qk_norm:
        maps.append(_same(f"{hf}.q_norm.weight", (*ours, "query_norm", "scale"), (dh,)))
        maps.append(_same(f"{hf}.k_norm.weight", (*ours, "key_norm", "scale"), (dh,)))
    return maps


def _mlp(config: DecoderConfig, hf: str, ours: Path_) -> list[_Mapping]:
    d, f = config.d_model, config.d_ff
    if config.architecture == "phi3":
        up = _fused(f"{hf}.gate_up_proj.weight", ((*ours, "gate"), (*ours, "up")), ((d, f), (d, f)))
        maps = [up]
    else:
        maps = [
            _linear(f"{hf}.gate_proj.weight", (*ours, "gate"), (d, f), (f, d)),
            _linear(f"{hf}.up_proj.weight", (*ours, "up"), (d, f), (f, d)),
        ]
    return [*maps, _linear(f"{hf}.down_proj.weight", (*ours, "down"), (f, d), (d, f))]


def _layout(config: DecoderConfig) -> list[_Mapping]:
    d, v = config.d_model, config.vocab_size
    maps = [_same("model.embed_tokens.weight", ("embedding",), (v, d))]
    for i in range(config.num_layers):
        hf, ours = f"model.layers.{i}", ("layers", i)
        maps += _attention(config, f"{hf}.self_attn", (*ours, "attention"))
        maps += _mlp(config, f"{hf}.mlp", (*ours, "mlp"))
        norms = [("input_layernorm", "attention_norm")]
        if config.post_norms:
            norms += [
                ("post_attention_layernorm", "post_attention_norm"),
                ("pre_feedforward_layernorm", "mlp_norm"),
                ("post_feedforward_layernorm", "post_mlp_norm"),
            ]
        else:
            norms += [("post_attention_layernorm", "mlp_norm")]
        maps += [_same(f"{hf}.{a}.weight", (*ours, b, "scale"), (d,)) for a, b in norms]
    maps.append(_same("model.norm.weight", ("final_norm", "scale"), (d,)))
    if not config.tie_word_embeddings:
        maps.append(
            _Mapping("lm_head.weight", (("lm_head",),), lambda a: (a.T,), lambda p: p[0].T, (v, d))
        )
    return maps


# ----------------------------------------------------------------------------- reading


def _read_file(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing checkpoint file")
    return read_safetensors(path)  # a damaged file: CheckpointError naming it


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors, or of the shards a model.safetensors.index.json lists
    (each listed tensor must be in its shard)."""
    single = directory / "model.safetensors"
    if single.is_file():
        return _read_file(single)
    index_path = directory / "model.safetensors.index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{directory}: no model.safetensors or model.safetensors.index.json")
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{index_path}: not a safetensors index ({error!r})") from error
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
        contents = _read_file(directory / shard)
        for name in (n for n, s in weight_map.items() if s == shard):
            if name not in contents:
                raise CheckpointError(f"{index_path}: tensor {name!r} is not in shard {shard}")
        tensors.update(contents)
    return tensors


def _sizes(config: DecoderConfig) -> str:
    """The config fields that a tensor's shape comes from, for errors."""
    return (
        f"d_model={config.d_model}, num_heads={config.num_heads}, "
        f"num_kv_heads={config.num_kv_heads}, head_dim={config.head_dim}, d_ff={config.d_ff}, "
        f"vocab_size={config.vocab_size}"
    )


def params_from_hf_tensors(
    tensors: Mapping[str, np.ndarray], config: DecoderConfig, *, source: str = "checkpoint"
) -> dict[Path_, np.ndarray]:
    """HF tensors -> our parameters keyed by unstacked path; checks names and shapes."""
    remaining = dict(tensors)
    params: dict[Path_, np.ndarray] = {}
    for mapping in _layout(config):
        value = take_tensor(
            remaining, mapping.hf_name, mapping.hf_shape, source=source, sizes=_sizes(config)
        )
        if not np.issubdtype(value.dtype, np.floating) and value.dtype.name != "bfloat16":
            raise CheckpointError(f"{source}: tensor {mapping.hf_name!r} has dtype {value.dtype}")
        params.update(zip(mapping.our_paths, mapping.to_ours(value), strict=True))
    if config.tie_word_embeddings and "lm_head.weight" in remaining:
        head = remaining.pop("lm_head.weight")
        if not np.array_equal(head, params[("embedding",)]):
            raise CheckpointError(
                f"{source}: tensor 'lm_head.weight' differs from 'model.embed_tokens.weight' but "
                "the config ties them (tie_word_embeddings)"
            )
    for name in [n for n in remaining if n.endswith(_IGNORED_SUFFIXES)]:
        remaining.pop(name)
    reject_unexpected_tensors(remaining, source)
    return params


def state_from_params(params: Mapping[Path_, np.ndarray], config: DecoderConfig) -> nnx.State:
    """Our model's nnx.State (plain or scanned layout) from unstacked-path parameters."""
    return state_from_unstacked_params(DecoderOnlyLM, params, config, layer_axis=_LAYER_AXIS)


# ----------------------------------------------------------------------------- public API


def load_hf_decoder(
    path_or_hub_id: str | os.PathLike[str],
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    **config_overrides: Any,
) -> tuple[DecoderConfig, nnx.State]:
    """Import a HF checkpoint: (our config, nnx.State of Params).

    `config_overrides` may set e.g. scan_layers or remat_policy. `load_hf_decoder_model`
    returns a ready model instead.
    """
    directory = resolve_checkpoint_dir(path_or_hub_id)
    config = config_from_dir(
        directory, config_from_hf, dtype=dtype, param_dtype=param_dtype, **config_overrides
    )
    params = params_from_hf_tensors(read_tensors(directory), config, source=str(directory))
    return config, state_from_params(params, config)


def load_hf_decoder_model(path_or_hub_id: str | os.PathLike[str], **kwargs: Any) -> DecoderOnlyLM:
    """Like `load_hf_decoder` but returns the model (config at `model.config`)."""
    config, state = load_hf_decoder(path_or_hub_id, **kwargs)
    return nnx.merge(nnx.graphdef(abstract_model(DecoderOnlyLM, config)), state)


def params_from_state(
    state: nnx.State | nnx.Module | Mapping[str, Any], config: DecoderConfig
) -> dict[Path_, np.ndarray]:
    """Our (plain or scanned) model, nnx.State or pure dict -> numpy params by unstacked path."""
    return unstacked_params_from_state(state, config, layer_axis=_LAYER_AXIS)


def _hf_tensors(
    params: Mapping[Path_, np.ndarray], config: DecoderConfig, dtype: str | None
) -> dict[str, np.ndarray]:
    tensors = {}
    for mapping in _layout(config):
        missing = [p for p in mapping.our_paths if p not in params]
        if missing:
            raise CheckpointError(
                f"save_hf_decoder: parameter {'/'.join(map(str, missing[0]))} missing for "
                f"tensor {mapping.hf_name!r}"
            )
        value = mapping.to_hf(tuple(params[p] for p in mapping.our_paths))
        value = np.ascontiguousarray(value if dtype is None else value.astype(jnp.dtype(dtype)))
        tensors[mapping.hf_name] = value
    return tensors


def _shards(tensors: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
    """Tensors in layout order, a new shard whenever the next would pass max_bytes."""
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, value in tensors.items():
        if shards[-1] and size + value.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = value
        size += value.nbytes
    return shards


def save_hf_decoder(
    model_or_params: DecoderOnlyLM | nnx.State | Mapping[str, Any],
    config: DecoderConfig,
    out_dir: str | os.PathLike[str],
    *,
    dtype: str | None = None,
    max_shard_bytes: int | None = None,
    tokenizer_files: TokenizerFiles = None,
) -> Path:
    """Export to a directory that transformers' AutoModelForCausalLM loads.

    Writes config.json and model.safetensors in the parameters' dtype unless `dtype` (e.g.
    'bfloat16'); past `max_shard_bytes`, model-0000i-of-0000n.safetensors shards and
    model.safetensors.index.json. Tokenizer files are copied by name.
    """
    check_architecture(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = _hf_tensors(params_from_state(model_or_params, config), config, dtype)
    shards = _shards(tensors, max_shard_bytes) if max_shard_bytes else [tensors]
    if len(shards) == 1:
        write_safetensors(tensors, out / "model.safetensors")
    else:
        weight_map = {}
        for number, shard in enumerate(shards, start=1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(shard, out / name)
            weight_map.update(dict.fromkeys(shard, name))
        index = {
            "metadata": {"total_size": int(sum(v.nbytes for v in tensors.values()))},
            "weight_map": weight_map,
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config_to_hf(config), indent=2) + "\n")
    for file in file_list(tokenizer_files):
        source = Path(file)
        if not source.is_file():
            raise CheckpointError(f"save_hf_decoder: tokenizer file {source} does not exist")
        shutil.copyfile(source, out / source.name)
    return out


def tokenizer_files_in(directory: str | os.PathLike[str]) -> list[Path]:
    """The tokenizer (and generation config) files of a HF checkpoint directory, to re-export."""
    return [Path(directory) / n for n in _TOKENIZER_FILES if (Path(directory) / n).is_file()]
