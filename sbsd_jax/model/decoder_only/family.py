"""The decoder-only family's hooks for model/spec.py: config, module, logits, decode, HF I/O.

What `ModelSpec` asks of an architecture (see spec.ModelFamily), for the causal-LM batch of
data/causal_lm.py: logits read decoder_input_tokens / decoder_segment_ids / decoder_positions
only, so packed rows attend within their segment and padding (segment 0) is masked by segment
id, never by token (0 is a real id in pretrained vocabularies).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from sbsd_jax.model.decoder_only.config import MODEL_NAMES, DecoderConfig, get_decoder_config

ARCHITECTURE = "decoder_only"

__all__ = [
    "ARCHITECTURE",
    "MODEL_NAMES",
    "build",
    "greedy_decode",
    "load_pretrained",
    "logits",
    "make_config",
    "save_pretrained",
]


def make_config(name: str, **fields: Any) -> DecoderConfig:
    return get_decoder_config(name, **fields)


def build(config: DecoderConfig, rngs: nnx.Rngs) -> nnx.Module:
    from sbsd_jax.model.decoder_only.transformer import DecoderOnlyLM

    return DecoderOnlyLM(config, rngs=rngs)


def logits(
    model: nnx.Module,
    batch: Mapping[str, jax.Array],
    deterministic: bool,
    rngs: nnx.Rngs | None,
) -> jax.Array:
    """[rows, row length, vocab] float32 for a causal-LM batch (the model has no dropout, so
    `deterministic` and `rngs` change nothing)."""
    del deterministic, rngs
    return model(
        batch["decoder_input_tokens"],
        segment_ids=batch["decoder_segment_ids"],
        positions=batch["decoder_positions"],
    )


def greedy_decode(
    graphdef: nnx.GraphDef,
    tokens: jax.Array,
    *,
    state: nnx.State,
    max_decode_length: int,
    prompt_segment_ids: jax.Array | None = None,
    eos_ids: tuple[int, ...] | None = None,
    pad_id: int | None = None,
    activation_sharding: Any = None,
) -> jax.Array:
    """Greedy continuations of left- or right-padded prompts (segment 0 = padding); the
    activations are left to XLA's propagation from the sharded parameters and prompts."""
    del activation_sharding
    from sbsd_jax.model.decoder_only.decode import greedy_decode as decode

    return decode(
        graphdef,
        tokens,
        state=state,
        max_decode_length=max_decode_length,
        prompt_segment_ids=prompt_segment_ids,
        eos_ids=eos_ids,
        pad_id=pad_id,
    )


def load_pretrained(path_or_hub_id: str, param_dtype: str) -> nnx.State:
    from sbsd_jax.model.decoder_only.hf_checkpoint import load_hf_decoder

    _, params = load_hf_decoder(path_or_hub_id, param_dtype=param_dtype)
    return params


def save_pretrained(
    params: Any,
    config: DecoderConfig,
    out_dir: str,
    *,
    tokenizer_file: str | None = None,
    byte_vocabulary: bool = False,
    tokenizer_files: Any = None,
) -> Any:
    """A folder transformers' AutoModelForCausalLM loads. `tokenizer_file` (a SentencePiece
    model or any single file) and `tokenizer_files` are copied beside the weights; a byte
    vocabulary has no file (its ids are in config.json: pad 0, EOS 1)."""
    del byte_vocabulary
    from sbsd_jax.model.decoder_only.hf_checkpoint import save_hf_decoder

    files = list(tokenizer_files or ())
    if tokenizer_file:
        files.append(tokenizer_file)
    return save_hf_decoder(params, config, out_dir, tokenizer_files=files or None)
