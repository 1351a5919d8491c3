"""Gated feed-forward: down(act(gate(x)) * up(x)), SwiGLU (SiLU) or GeGLU (tanh GELU).

Kernels gate/up [embed, mlp] and down [mlp, embed]; Phi-3's fused gate_up tensor is split on
import (hf_checkpoint.py), so every family runs the same two dots.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sbsd_jax.model import sharding
from sbsd_jax.model.decoder_only.config import DecoderConfig
from sbsd_jax.model.decoder_only.params import normal, param, project

Array = jax.Array


def activation(name: str, x: Array) -> Array:
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.gelu(x, approximate=True)  # HF's gelu_pytorch_tanh


class MLP(nnx.Module):
    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        d, f, pdt = config.d_model, config.d_ff, config.param_dtype
        self.gate = param(rngs, normal(d**-0.5), (d, f), ("embed", "mlp"), pdt)
        self.up = param(rngs, normal(d**-0.5), (d, f), ("embed", "mlp"), pdt)
        self.down = param(rngs, normal(f**-0.5), (f, d), ("mlp", "embed"), pdt)
        self.activation = config.activation
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        gate = activation(self.activation, project("btd,df->btf", x, self.gate[...], self.dtype))
        hidden = gate * project("btd,df->btf", x, self.up[...], self.dtype)
        hidden = sharding.constrain(
            hidden, ("activation_batch", "activation_length", "activation_mlp")
        )
        out = project("btf,fd->btd", hidden, self.down[...], self.dtype)
        return sharding.constrain(
            out, ("activation_batch", "activation_length", "activation_embed")
        )
