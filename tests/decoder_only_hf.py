"""Tiny random Hugging Face decoder-only models, one per supported architecture, for tests.

Each config switches on what its family has (GQA, rope scaling, biases, QK-norm, sliding
windows shorter than the test sequences, soft-capping, a local rope base), and every weight is
redrawn at a scale where norms, biases and caps change the logits (HF's own init leaves norm
weights at 1 or 0 and biases at 0).
"""

from __future__ import annotations

import pathlib

ARCHITECTURES = ("llama", "qwen2", "qwen3", "phi3", "gemma2", "gemma3")
VOCAB = 96
PAD, BOS = 0, 1


def hf_config(arch: str):
    import transformers

    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=2,
    )
    if arch == "llama":
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500_000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8,
        }
        return transformers.LlamaConfig(**common, rope_parameters=rope, attention_bias=True)
    if arch == "qwen2":
        return transformers.Qwen2Config(**common, tie_word_embeddings=True)
    if arch == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)
    if arch == "phi3":
        rope = {
            "rope_type": "longrope",
            "rope_theta": 10_000.0,
            "short_factor": [1.0, 1.5],
            "long_factor": [2.0, 5.0],
            "original_max_position_embeddings": 8,
            "partial_rotary_factor": 0.5,
        }
        return transformers.Phi3Config(
            **common,
            sliding_window=5,
            rope_parameters=rope,
            max_position_embeddings=64,
            original_max_position_embeddings=8,
        )
    if arch == "gemma2":
        return transformers.Gemma2Config(
            **common,
            head_dim=8,
            sliding_window=4,
            query_pre_attn_scalar=10,
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        )
    if arch == "gemma3":
        rope = {
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
        }
        return transformers.Gemma3TextConfig(
            **common,
            head_dim=8,
            sliding_window=4,
            query_pre_attn_scalar=10,
            layer_types=["sliding_attention", "full_attention"],
            final_logit_softcapping=4.0,
            rope_parameters=rope,
        )
    raise ValueError(arch)


def hf_model(arch: str, seed: int = 0):
    """A random transformers causal LM of `arch` in eval mode (float32)."""
    import torch
    import transformers

    config = hf_config(arch)
    model = transformers.AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


def save_hf_model(arch: str, directory: pathlib.Path, seed: int = 0):
    """Saves hf_model(arch) under `directory` (save_pretrained) and returns the model."""
    model = hf_model(arch, seed)
    model.save_pretrained(directory)
    return model
