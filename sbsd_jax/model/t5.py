"""T5 encoder-decoder in Flax NNX, numerically matching Hugging Face's PyTorch T5.

One file, top to bottom: numerics helpers (RMS norm, relative position buckets, masks, dropout),
then the modules (attention, MLP, block, stack, model). Covers T5 v1.0 (ReLU MLP, tied embeddings
with the d_model**-0.5 rescale before the LM head) and v1.1 / FLAN-T5 (gated-GELU with the tanh
approximation, untied lm_head).

Conventions:
* Parameters are float32 (`config.param_dtype`) and carry logical axis names; math runs in
  `config.dtype` (bfloat16 on accelerators); softmax, layer-norm statistics and logits are float32.
* T5 does not scale q.k by 1/sqrt(d_kv) (it is folded into the initialisation).
* The relative position bias table lives once per stack (HF keeps it in block 0 only) and the
  bias is computed once per stack, then shared by all layers, as in T5.
* Dropout keys come only from the `rngs` argument at call time, so a train step is a pure
  function of (params, batch, key).
* Layers are applied through nnx.split/merge so `scan_layers` (one stacked layer, lax.scan) and
  `remat_policy` (jax.checkpoint) are plain JAX transforms around the same layer code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache, partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbsd_jax.model import sharding
from sbsd_jax.model.config import T5Config

Array = jax.Array
DecodeCache = dict[str, Array]

_MASK_VALUE = -1e10  # finite, so fully masked rows give a uniform softmax instead of NaN

BATCH, LENGTH, EMBED = "activation_batch", "activation_length", "activation_embed"
HEADS, KV, HIDDEN, VOCAB = "activation_heads", "activation_kv", "activation_mlp", "activation_vocab"


# ----------------------------------------------------------------------------- numerics


def rms_norm(x: Array, scale: Array, epsilon: float, dtype: jnp.dtype) -> Array:
    """T5 layer norm: scale only, no mean subtraction, no bias; statistics in float32."""
    x32 = x.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    return (scale.astype(jnp.float32) * (x32 * jax.lax.rsqrt(variance + epsilon))).astype(dtype)


def _einsum_f32_accumulate(spec: str, a: Array, b: Array, dtype: jnp.dtype) -> Array:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


@partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def _accumulating_einsum(spec: str, a: Array, b: Array, out_dtype: jnp.dtype) -> Array:
    return _einsum_f32_accumulate(spec, a, b, a.dtype).astype(out_dtype)


def _accumulating_einsum_fwd(
    spec: str, a: Array, b: Array, out_dtype: jnp.dtype
) -> tuple[Array, tuple[Array, Array]]:
    return _accumulating_einsum(spec, a, b, out_dtype), (a, b)


def _accumulating_einsum_bwd(
    spec: str, out_dtype: jnp.dtype, residuals: tuple[Array, Array], grad: Array
) -> tuple[Array, Array]:
    del out_dtype
    a, b = residuals
    operands, out_spec = spec.split("->")
    a_spec, b_spec = operands.split(",")
    grad = grad.astype(a.dtype)
    grad_a = _einsum_f32_accumulate(f"{out_spec},{b_spec}->{a_spec}", grad, b, a.dtype)
    grad_b = _einsum_f32_accumulate(f"{a_spec},{out_spec}->{b_spec}", a, grad, a.dtype)
    return grad_a.astype(a.dtype), grad_b.astype(b.dtype)


_accumulating_einsum.defvjp(_accumulating_einsum_fwd, _accumulating_einsum_bwd)


def einsum(
    spec: str,
    a: Array,
    b: Array,
    dtype: jnp.dtype,
    *,
    out_dtype: jnp.dtype | None = None,
    accumulate_vjp: bool = False,
) -> Array:
    """`a` (activations) x `b` (activations or a float32 kernel), multiplied in `dtype`.

    The result is `out_dtype` (default `dtype`; float32 outputs accumulate in float32).
    `accumulate_vjp` (with a low-precision `dtype`): every dot, forward and backward, is
    `dtype` x `dtype` with float32 accumulation, and the kernel's gradient leaves the dot in
    `b`'s own dtype. Why: XLA:CPU runs a bf16 x bf16 -> bf16 dot, which is what JAX derives
    for the backward pass, by converting both operands to float32, 2-3x slower than its bf16
    dot with float32 output on AVX512-BF16 cores. Accelerators accumulate in float32 natively,
    and there a custom VJP would hide the dots from remat policies, so it stays off.
    Every index of an operand must appear in the other operand or in the output. Meant for
    projections by a kernel: XLA:CPU has no bf16 -> f32 kernel for batched dots.
    """
    out_dtype = jnp.dtype(out_dtype or dtype)
    if accumulate_vjp and jnp.dtype(dtype) != jnp.float32:
        return _accumulating_einsum(spec, a.astype(dtype), b, out_dtype)
    if out_dtype == jnp.float32:
        return _einsum_f32_accumulate(spec, a, b, dtype)
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype)).astype(out_dtype)


@lru_cache(maxsize=32)
def _bucket_of_distance(num_buckets: int, max_distance: int) -> np.ndarray:
    """Bucket for each absolute distance 0..max_distance (larger distances share the last one).

    Computed in float32 exactly as transformers does (log, divide, truncate) but once, on the
    host, so every backend gets identical buckets.
    """
    max_exact = num_buckets // 2
    distance = np.arange(max_distance + 1, dtype=np.int64)
    with np.errstate(divide="ignore"):
        scaled = (
            np.log(distance.astype(np.float32) / np.float32(max_exact))
            / np.float32(math.log(max_distance / max_exact))
            * np.float32(num_buckets - max_exact)
        )
    large = max_exact + np.where(np.isfinite(scaled), scaled, 0).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return np.where(distance < max_exact, distance, large).astype(np.int32)


def relative_position_bucket(
    relative_position: Array, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> Array:
    """Mesh-TF/HF T5 bucketing of (key position - query position)."""
    buckets = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = jnp.maximum(-relative_position, 0)
    table = jnp.asarray(_bucket_of_distance(num_buckets, max_distance))
    return buckets + table[jnp.minimum(distance, max_distance)]


def attention_mask_bias(mask: Array) -> Array:
    """Additive float32 bias from a boolean [B, 1, Q, K] mask (True = may attend)."""
    return jnp.where(mask, 0.0, _MASK_VALUE).astype(jnp.float32)


_DROPOUT_BITS = 16  # per draw: keep probability within 2**-17 of 1 - rate
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(key_words: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 (20 rounds, Random123), written out as plain element-wise uint32 ops.

    Same function as `jax.extend.random.threefry_2x32`, but jax lowers that on CPU as a rolled
    5-iteration loop whose every iteration writes its two words to memory and which XLA cannot
    fuse into the consumer; unrolled, the whole hash fuses into the dropout select, so the
    random bits never touch memory (a [16, 6, 256, 256] dropout: ~21 ms vs ~90-120 ms with
    jax.random.bernoulli on this 2-core CPU). GPU/TPU lowerings already unroll it.
    """
    k0, k1 = key_words[0], key_words[1]
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for block in range(5):
        for rotation in _THREEFRY_ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(rotation)) | (x1 >> jnp.uint32(32 - rotation))
            x1 = x1 ^ x0
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def _uniform_words(key: Array, shape: tuple[int, ...]) -> Array:
    """uint32 words of `shape` (last axis even): one threefry block per two words.

    Counters are (flat index, flat index + half) over the first half of the words, so every
    block has its own counter pair. Keys of another PRNG implementation, and arrays too large
    for distinct uint32 counters, use jax.random.bits.
    """
    half_shape = (*shape[:-1], 1, shape[-1] // 2)
    half = math.prod(half_shape)
    if str(jax.random.key_impl(key)) != "threefry2x32" or half >= 2**31:
        return jax.random.bits(key, shape, jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, half).reshape(half_shape)
    words0, words1 = threefry2x32(jax.random.key_data(key), counter, counter + jnp.uint32(half))
    which = jax.lax.broadcasted_iota(jnp.uint32, (*shape[:-1], 2, shape[-1] // 2), len(shape) - 1)
    return jnp.where(which == 0, words0, words1).reshape(shape)


def dropout_keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> tuple[Array, float]:
    """(boolean keep mask, exact keep probability) from 16-bit uniform draws.

    Random bits dominate dropout's cost on CPU, so each 32-bit threefry word gives two
    independent 16-bit draws (a quarter of a block per draw, half of `jax.random.bernoulli`'s
    work). A draw keeps when it is >= round(rate * 2**16); the returned keep probability is
    that threshold's exact value (|p - (1 - rate)| <= 2**-17), so scaling kept values by 1 / p
    keeps dropout unbiased.
    """
    levels = 1 << _DROPOUT_BITS
    threshold = min(max(round(rate * levels), 0), levels)
    keep_probability = (levels - threshold) / levels
    if shape and shape[-1] % 4 == 0:
        # [..., 1, n/2] words >> [[0], [16]] -> [..., 2, n/2] -> [..., n]: broadcast, shift and
        # a bitcast reshape, all fused into the consumer (a concatenate would not fuse on CPU).
        words = _uniform_words(key, (*shape[:-1], 1, shape[-1] // 2))
        shifts = jnp.asarray([[0], [_DROPOUT_BITS]], jnp.uint32)
        draws = ((words >> shifts) & jnp.uint32(levels - 1)).reshape(shape)
    else:
        draws = jax.random.bits(key, shape, jnp.uint32) >> _DROPOUT_BITS
    return draws >= jnp.uint32(threshold), keep_probability


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout; identity when `key` is None (deterministic)."""
    if key is None or rate == 0.0:
        return x
    if rate >= 1.0:
        return jnp.zeros_like(x)
    keep, keep_probability = dropout_keep_mask(key, rate, x.shape)
    scale = jnp.asarray(1.0 / keep_probability, x.dtype)
    return jnp.where(keep, x * scale, jnp.zeros_like(x))


def _fold(key: Array | None, site: int) -> Array | None:
    return None if key is None else jax.random.fold_in(key, site)


def _param(
    rngs: nnx.Rngs,
    init: Callable[..., Array],
    shape: tuple[int, ...],
    axes: tuple[str, ...],
    dtype: jnp.dtype,
) -> nnx.Param:
    return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), shape, dtype))


def _normal(stddev: float) -> Callable[..., Array]:
    return nnx.initializers.normal(stddev=stddev)


# ----------------------------------------------------------------------------- modules


class RMSNorm(nnx.Module):
    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.scale = _param(
            rngs,
            nnx.initializers.ones,
            (config.d_model,),
            ("embed",),
            jnp.dtype(config.param_dtype),
        )
        self.epsilon = config.layer_norm_epsilon
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        return rms_norm(x, self.scale[...], self.epsilon, self.dtype)


class RelativePositionBias(nnx.Module):
    """[buckets, heads] table -> additive attention bias [B or 1, heads, Q, K] (float32)."""

    def __init__(self, config: T5Config, *, bidirectional: bool, rngs: nnx.Rngs):
        self.embedding = _param(
            rngs,
            _normal(config.d_model**-0.5),
            (config.relative_attention_num_buckets, config.num_heads),
            ("relpos_buckets", "heads"),
            jnp.dtype(config.param_dtype),
        )
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance

    def __call__(self, query_positions: Array, key_positions: Array) -> Array:
        """Positions are [B or 1, Q] and [B or 1, K] int arrays."""
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(
            relative,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        values = jnp.take(self.embedding[...].astype(jnp.float32), buckets, axis=0)
        return jnp.transpose(values, (0, 3, 1, 2))


class Attention(nnx.Module):
    """Multi-head attention without q.k scaling; kernels [embed, heads, kv] / [heads, kv, embed]."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        d, h, k = config.d_model, config.num_heads, config.d_kv
        in_axes, out_axes = ("embed", "heads", "kv"), ("heads", "kv", "embed")
        self.query = _param(rngs, _normal((d * k) ** -0.5), (d, h, k), in_axes, dtype)
        self.key = _param(rngs, _normal(d**-0.5), (d, h, k), in_axes, dtype)
        self.value = _param(rngs, _normal(d**-0.5), (d, h, k), in_axes, dtype)
        self.out = _param(rngs, _normal((h * k) ** -0.5), (h, k, d), out_axes, dtype)
        self.dtype = jnp.dtype(config.dtype)
        self.accumulating_dot_vjp = config.accumulating_dot_vjp
        self.dropout_rate = config.dropout_rate

    def project_kv(self, inputs: Array) -> tuple[Array, Array]:
        """Keys and values [B, S, heads, kv] of `inputs`."""
        keys, values = self._project(inputs, (self.key, self.value))
        return keys, values

    def project_qkv(self, inputs: Array) -> tuple[Array, Array, Array]:
        """Queries, keys and values of `inputs` (self-attention)."""
        query, keys, values = self._project(inputs, (self.query, self.key, self.value))
        return query, keys, values

    def project_query(self, inputs: Array) -> Array:
        """Queries of `inputs` (cross-attention: keys and values come from the encoder)."""
        (query,) = self._project(inputs, (self.query,))
        return query

    def _project(self, inputs: Array, kernels: tuple[nnx.Param, ...]) -> list[Array]:
        # One dot per kernel: stacking them into one wider dot measured no faster on XLA:CPU.
        return [
            sharding.constrain(
                einsum(
                    "bsd,dhk->bshk",
                    inputs,
                    kernel[...],
                    self.dtype,
                    accumulate_vjp=self.accumulating_dot_vjp,
                ),
                (BATCH, LENGTH, HEADS, KV),
            )
            for kernel in kernels
        ]

    def __call__(
        self, query: Array, bias: Array, *, keys: Array, values: Array, dropout_key: Array | None
    ) -> Array:
        """Attention of projected `query` [B, Q, heads, kv] over `keys`/`values` [B, S, ...].

        `bias` [B or 1, heads or 1, Q, K] holds position bias plus mask, float32.
        """
        # Batched products keep JAX's own VJP: XLA:CPU has no bf16 -> f32 kernel for them.
        scores = einsum("bqhk,bshk->bhqs", query, keys, self.dtype, out_dtype=jnp.float32)
        # Softmax with the normalisation deferred past the context product (as flash attention
        # does): dropout(e / sum) @ v == (dropout(e) @ v) / sum, and dividing the [B, Q, heads,
        # kv] context is cheaper than the [B, heads, Q, K] weights, forward and backward (~6%
        # of a packed T5-small step on CPU). The max shift only guards exp from overflow; the
        # result does not depend on it, so it carries no gradient.
        scores = scores + bias
        shift = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))
        unnormalised = jnp.exp(scores - shift)
        total = jnp.sum(unnormalised, axis=-1)  # [B, heads, Q]
        unnormalised = dropout(unnormalised, self.dropout_rate, dropout_key)
        context = einsum("bhqs,bshk->bqhk", unnormalised, values, self.dtype, out_dtype=jnp.float32)
        context = (context / jnp.transpose(total, (0, 2, 1))[..., None]).astype(self.dtype)
        context = sharding.constrain(context, (BATCH, LENGTH, HEADS, KV))
        return einsum(
            "bqhk,hkd->bqd",
            context,
            self.out[...],
            self.dtype,
            accumulate_vjp=self.accumulating_dot_vjp,
        )


class MLP(nnx.Module):
    """ReLU (v1.0) or gated-GELU with the tanh approximation (v1.1, HF's gelu_new)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.param_dtype)
        d, f = config.d_model, config.d_ff
        self.gated = config.feed_forward == "gated-gelu"
        if self.gated:
            self.wi_0 = _param(rngs, _normal(d**-0.5), (d, f), ("embed", "mlp"), dtype)
            self.wi_1 = _param(rngs, _normal(d**-0.5), (d, f), ("embed", "mlp"), dtype)
        else:
            self.wi = _param(rngs, _normal(d**-0.5), (d, f), ("embed", "mlp"), dtype)
        self.wo = _param(rngs, _normal(f**-0.5), (f, d), ("mlp", "embed"), dtype)
        self.dtype = jnp.dtype(config.dtype)
        self.accumulating_dot_vjp = config.accumulating_dot_vjp
        self.dropout_rate = config.dropout_rate

    def __call__(self, x: Array, dropout_key: Array | None) -> Array:
        if self.gated:
            gate = jax.nn.gelu(self._project(x, self.wi_0[...]), approximate=True)
            hidden = gate * self._project(x, self.wi_1[...])
        else:
            hidden = jax.nn.relu(self._project(x, self.wi[...]))
        hidden = sharding.constrain(hidden, (BATCH, LENGTH, HIDDEN))
        hidden = dropout(hidden, self.dropout_rate, dropout_key)
        return self._project(hidden, self.wo[...])

    def _project(self, x: Array, kernel: Array) -> Array:
        return einsum(
            "...i,io->...o", x, kernel, self.dtype, accumulate_vjp=self.accumulating_dot_vjp
        )


class Block(nnx.Module):
    """Pre-norm residual block: self-attention, [cross-attention,] MLP."""

    def __init__(self, config: T5Config, *, is_decoder: bool, rngs: nnx.Rngs):
        self.is_decoder = is_decoder
        self.dropout_rate = config.dropout_rate
        self.self_attention_norm = RMSNorm(config, rngs=rngs)
        self.self_attention = Attention(config, rngs=rngs)
        if is_decoder:
            self.cross_attention_norm = RMSNorm(config, rngs=rngs)
            self.cross_attention = Attention(config, rngs=rngs)
        self.mlp_norm = RMSNorm(config, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self,
        x: Array,
        *,
        self_bias: Array,
        encoded: Array | None = None,
        cross_bias: Array | None = None,
        cache: DecodeCache | None = None,
        cache_index: Array | None = None,
        dropout_key: Array | None = None,
    ) -> tuple[Array, DecodeCache | None]:
        normed = self.self_attention_norm(x)
        query, keys, values = self.self_attention.project_qkv(normed)
        new_cache = None
        if cache is not None:
            # Incremental decoding: write this step's key/value at cache_index, attend to all.
            keys = jax.lax.dynamic_update_slice_in_dim(
                cache["self_keys"], keys.astype(cache["self_keys"].dtype), cache_index, axis=1
            )
            values = jax.lax.dynamic_update_slice_in_dim(
                cache["self_values"], values.astype(cache["self_values"].dtype), cache_index, axis=1
            )
            new_cache = dict(cache, self_keys=keys, self_values=values)
        attended = self.self_attention(
            query, self_bias, keys=keys, values=values, dropout_key=_fold(dropout_key, 0)
        )
        x = x + dropout(attended, self.dropout_rate, _fold(dropout_key, 1))
        x = sharding.constrain(x, (BATCH, LENGTH, EMBED))

        if self.is_decoder:
            normed = self.cross_attention_norm(x)
            if cache is not None:
                keys, values = cache["cross_keys"], cache["cross_values"]
            else:
                keys, values = self.cross_attention.project_kv(encoded)
            attended = self.cross_attention(
                self.cross_attention.project_query(normed),
                cross_bias,
                keys=keys,
                values=values,
                dropout_key=_fold(dropout_key, 2),
            )
            x = x + dropout(attended, self.dropout_rate, _fold(dropout_key, 3))
            x = sharding.constrain(x, (BATCH, LENGTH, EMBED))

        hidden = self.mlp(self.mlp_norm(x), _fold(dropout_key, 4))
        x = x + dropout(hidden, self.dropout_rate, _fold(dropout_key, 5))
        return sharding.constrain(x, (BATCH, LENGTH, EMBED)), new_cache


def _remat(fn: Callable[..., Any], policy_name: str, *, in_scan: bool) -> Callable[..., Any]:
    if policy_name == "none":
        return fn
    policy = None if policy_name == "full" else getattr(jax.checkpoint_policies, policy_name)
    return jax.checkpoint(fn, policy=policy, prevent_cse=not in_scan)


class Stack(nnx.Module):
    """Encoder or decoder stack: shared relative position bias, layers, final norm."""

    def __init__(self, config: T5Config, *, is_decoder: bool, rngs: nnx.Rngs):
        self.config = config
        self.is_decoder = is_decoder
        self.relative_position_bias = RelativePositionBias(
            config, bidirectional=not is_decoder, rngs=rngs
        )
        num_layers = config.num_decoder_layers if is_decoder else config.num_encoder_layers
        self.num_layers = num_layers
        if config.scan_layers:

            @nnx.split_rngs(splits=num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(layer_rngs: nnx.Rngs) -> Block:
                return Block(config, is_decoder=is_decoder, rngs=layer_rngs)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List(
                [Block(config, is_decoder=is_decoder, rngs=rngs) for _ in range(num_layers)]
            )
        self.final_norm = RMSNorm(config, rngs=rngs)

    def __call__(
        self,
        x: Array,
        *,
        self_bias: Array,
        encoded: Array | None = None,
        cross_bias: Array | None = None,
        cache: DecodeCache | None = None,
        cache_index: Array | None = None,
        dropout_key: Array | None = None,
    ) -> tuple[Array, DecodeCache | None]:
        """x: embedded inputs [B, L, d_model]. `cache` holds per-layer arrays stacked on axis 0."""
        x = dropout(x, self.config.dropout_rate, _fold(dropout_key, 0))
        x = sharding.constrain(x, (BATCH, LENGTH, EMBED))
        layer_keys = (
            None
            if dropout_key is None
            else jax.random.split(_fold(dropout_key, 1), self.num_layers)
        )

        def apply_layer(
            layer_state: nnx.State,
            graphdef: nnx.GraphDef,
            x: Array,
            layer_cache: DecodeCache | None,
            key: Array | None,
        ) -> tuple[Array, DecodeCache | None]:
            layer = nnx.merge(graphdef, layer_state)
            return layer(
                x,
                self_bias=self_bias,
                encoded=encoded,
                cross_bias=cross_bias,
                cache=layer_cache,
                cache_index=cache_index,
                dropout_key=key,
            )

        if self.config.scan_layers:
            graphdef, state = nnx.split(self.layers)
            step = _remat(
                lambda s, h, c, k: apply_layer(s, graphdef, h, c, k),
                self.config.remat_policy,
                in_scan=True,
            )

            def body(h: Array, xs: tuple[Any, Any, Any]) -> tuple[Array, Any]:
                layer_state, layer_cache, key = xs
                return step(layer_state, h, layer_cache, key)

            x, new_cache = jax.lax.scan(body, x, (state, cache, layer_keys))
        else:
            new_layer_caches = []
            for index, layer in enumerate(self.layers):
                graphdef, state = nnx.split(layer)
                step = _remat(
                    lambda s, h, c, k, g=graphdef: apply_layer(s, g, h, c, k),
                    self.config.remat_policy,
                    in_scan=False,
                )
                layer_cache = (
                    None if cache is None else jax.tree.map(lambda a, i=index: a[i], cache)
                )
                key = None if layer_keys is None else layer_keys[index]
                x, layer_cache = step(state, x, layer_cache, key)
                new_layer_caches.append(layer_cache)
            new_cache = (
                None if cache is None else jax.tree.map(lambda *a: jnp.stack(a), *new_layer_caches)
            )

        x = self.final_norm(x)
        x = dropout(x, self.config.dropout_rate, _fold(dropout_key, 2))
        return sharding.constrain(x, (BATCH, LENGTH, EMBED)), new_cache


def _dropout_key(deterministic: bool, rngs: nnx.Rngs | None) -> Array | None:
    if deterministic:
        return None
    if rngs is None:
        raise ValueError("T5: deterministic=False needs rngs=nnx.Rngs(dropout=...) for dropout")
    return rngs.dropout()


def _index_positions(length: int) -> Array:
    """Positions 0..length-1 shared by every row: [1, length]."""
    return jnp.arange(length, dtype=jnp.int32)[None, :]


class T5(nnx.Module):
    """T5 encoder-decoder; `__call__` returns float32 logits [B, T, vocab]."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        self.dtype = jnp.dtype(config.dtype)
        self.shared = _param(
            rngs,
            _normal(1.0),
            (config.vocab_size, config.d_model),
            ("vocab", "embed"),
            jnp.dtype(config.param_dtype),
        )
        self.encoder = Stack(config, is_decoder=False, rngs=rngs)
        self.decoder = Stack(config, is_decoder=True, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _param(
                rngs,
                _normal(config.d_model**-0.5),
                (config.d_model, config.vocab_size),
                ("embed", "vocab"),
                jnp.dtype(config.param_dtype),
            )

    # -- pieces

    def embed(self, tokens: Array) -> Array:
        embedded = jnp.take(self.shared[...], tokens, axis=0).astype(self.dtype)
        return sharding.constrain(embedded, (BATCH, LENGTH, EMBED))

    def logits(self, decoder_output: Array) -> Array:
        """LM head; v1.0 rescales by d_model**-0.5 and reuses the embedding ([vocab, embed],
        contracted as it is: XLA:CPU has no bf16 x bf16 -> f32 dot for a transposed operand)."""
        if self.config.tie_word_embeddings:
            decoder_output = decoder_output * jnp.asarray(self.config.d_model**-0.5, self.dtype)
            spec, kernel = "btd,vd->btv", self.shared[...]
        else:
            spec, kernel = "btd,dv->btv", self.lm_head[...]
        logits = einsum(
            spec,
            decoder_output,
            kernel,
            self.dtype,
            out_dtype=jnp.float32,
            accumulate_vjp=self.config.accumulating_dot_vjp,
        )
        return sharding.constrain(logits, (BATCH, LENGTH, VOCAB))

    @staticmethod
    def encoder_key_mask(
        encoder_input_tokens: Array, encoder_segment_ids: Array | None, pad_token_id: int
    ) -> Array:
        """[B, S] True where a decoder/encoder query may find a real encoder token."""
        if encoder_segment_ids is not None:
            return encoder_segment_ids != 0
        return encoder_input_tokens != pad_token_id

    # -- encoder

    def encode(
        self,
        encoder_input_tokens: Array,
        *,
        encoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        dropout_key: Array | None = None,
    ) -> Array:
        """Encoder output [B, S, d_model] in the compute dtype (after final norm and dropout)."""
        if dropout_key is None:
            dropout_key = _dropout_key(deterministic, rngs)
        length = encoder_input_tokens.shape[1]
        if encoder_segment_ids is None:
            mask = (encoder_input_tokens != self.config.pad_token_id)[:, None, None, :]
        else:
            same = encoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]
            mask = (same & (encoder_segment_ids != 0)[:, None, :])[:, None]
        positions = _index_positions(length) if encoder_positions is None else encoder_positions
        bias = self.encoder.relative_position_bias(positions, positions) + attention_mask_bias(mask)
        encoded, _ = self.encoder(
            self.embed(encoder_input_tokens), self_bias=bias, dropout_key=dropout_key
        )
        return encoded

    # -- decoder

    def decode(
        self,
        decoder_input_tokens: Array,
        encoded: Array,
        *,
        encoder_input_tokens: Array | None = None,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
        dropout_key: Array | None = None,
    ) -> Array:
        """Teacher-forced decoder: float32 logits [B, T, vocab].

        The decoder self-attention is causal (plus same-segment when segment ids are given); the
        start token is id 0, so decoder pads are not masked by id (causality keeps them harmless).
        """
        if dropout_key is None:
            dropout_key = _dropout_key(deterministic, rngs)
        if encoder_input_tokens is None and encoder_segment_ids is None:
            raise ValueError(
                "T5.decode needs encoder_input_tokens or encoder_segment_ids for "
                "the cross-attention mask"
            )
        batch, length = decoder_input_tokens.shape
        index = jnp.arange(length, dtype=jnp.int32)
        mask = (index[:, None] >= index[None, :])[None, None]
        if decoder_segment_ids is not None:
            same = decoder_segment_ids[:, :, None] == decoder_segment_ids[:, None, :]
            mask = mask & (same & (decoder_segment_ids != 0)[:, None, :])[:, None]
        positions = _index_positions(length) if decoder_positions is None else decoder_positions
        self_bias = self.decoder.relative_position_bias(positions, positions) + attention_mask_bias(
            mask
        )

        key_mask = self.encoder_key_mask(
            encoder_input_tokens, encoder_segment_ids, self.config.pad_token_id
        )
        if decoder_segment_ids is not None and encoder_segment_ids is not None:
            cross = (decoder_segment_ids[:, :, None] == encoder_segment_ids[:, None, :]) & (
                key_mask[:, None, :]
            )
        else:
            cross = jnp.broadcast_to(key_mask[:, None, :], (batch, length, key_mask.shape[1]))
        cross_bias = attention_mask_bias(cross[:, None])

        hidden, _ = self.decoder(
            self.embed(decoder_input_tokens),
            self_bias=self_bias,
            encoded=encoded.astype(self.dtype),
            cross_bias=cross_bias,
            dropout_key=dropout_key,
        )
        return self.logits(hidden)

    def __call__(
        self,
        encoder_input_tokens: Array,
        decoder_input_tokens: Array,
        *,
        encoder_segment_ids: Array | None = None,
        decoder_segment_ids: Array | None = None,
        encoder_positions: Array | None = None,
        decoder_positions: Array | None = None,
        deterministic: bool = True,
        rngs: nnx.Rngs | None = None,
    ) -> Array:
        key = _dropout_key(deterministic, rngs)
        encoded = self.encode(
            encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            encoder_positions=encoder_positions,
            dropout_key=_fold(key, 0),
        )
        return self.decode(
            decoder_input_tokens,
            encoded,
            encoder_input_tokens=encoder_input_tokens,
            encoder_segment_ids=encoder_segment_ids,
            decoder_segment_ids=decoder_segment_ids,
            decoder_positions=decoder_positions,
            dropout_key=_fold(key, 1),
        )

    # -- incremental decoding

    def init_decode_cache(
        self, encoded: Array, encoder_input_tokens: Array, max_decode_length: int
    ) -> DecodeCache:
        """KV cache for `decode_step`: cross-attention K/V computed once, empty self K/V."""
        config = self.config
        batch = encoded.shape[0]
        encoded = encoded.astype(self.dtype)
        cross_keys, cross_values = [], []
        if config.scan_layers:
            graphdef, state = nnx.split(self.decoder.layers)

            def project(layer_state: nnx.State) -> tuple[Array, Array]:
                return nnx.merge(graphdef, layer_state).cross_attention.project_kv(encoded)

            stacked_keys, stacked_values = jax.lax.map(project, state)
        else:
            for layer in self.decoder.layers:
                keys, values = layer.cross_attention.project_kv(encoded)
                cross_keys.append(keys)
                cross_values.append(values)
            stacked_keys, stacked_values = jnp.stack(cross_keys), jnp.stack(cross_values)
        empty = jnp.zeros(
            (config.num_decoder_layers, batch, max_decode_length, config.num_heads, config.d_kv),
            self.dtype,
        )
        return {
            "self_keys": empty,
            "self_values": empty,
            "cross_keys": stacked_keys,
            "cross_values": stacked_values,
            "encoder_mask": self.encoder_key_mask(encoder_input_tokens, None, config.pad_token_id),
            "index": jnp.zeros((), jnp.int32),
        }

    def decode_step(self, tokens: Array, cache: DecodeCache) -> tuple[Array, DecodeCache]:
        """One decoder step for tokens [B] at position cache['index']: float32 logits [B, vocab]."""
        index = cache["index"]
        max_length = cache["self_keys"].shape[2]
        key_positions = jnp.arange(max_length, dtype=jnp.int32)[None, :]
        self_mask = (key_positions <= index)[:, None, None, :]
        self_bias = self.decoder.relative_position_bias(
            jnp.reshape(index, (1, 1)), key_positions
        ) + attention_mask_bias(self_mask)
        cross_bias = attention_mask_bias(cache["encoder_mask"][:, None, None, :])
        layer_cache = {
            k: cache[k] for k in ("self_keys", "self_values", "cross_keys", "cross_values")
        }
        hidden, layer_cache = self.decoder(
            self.embed(tokens[:, None]),
            self_bias=self_bias,
            cross_bias=cross_bias,
            cache=layer_cache,
            cache_index=index,
        )
        logits = self.logits(hidden)[:, 0]
        return logits, dict(cache, **layer_cache, index=index + 1)
