"""Adapting a student with LoRA or QLoRA: frozen (optionally quantised) kernels, rank-r update.

`apply_lora(model, spec, rngs=...)` replaces every kernel whose path matches `spec.target` by a
`LoraKernel`: the frozen base (an `nnx.Param`, or its qwix-quantised nf4 / int4 / int8 storage)
and two adapters `lora_a` [in..., r] (He-uniform) and `lora_b` [r, out...] (zeros), both
`nnx.LoRAParam` as in qwix. The model reads `kernel[...]` as before and gets the effective kernel

    dequantize(base) + (alpha / rank) * lora_a @ lora_b        (qwix's scaling)

so T5 (and any model that reads its kernels with `[...]`) needs no change.

Why not `qwix.apply_lora_to_model`: qwix finds the kernel of each intercepted einsum by object
identity (or, failing that, by shape) in the module that calls it, and creates the adapters in
that module during one traced call. Our T5 runs each layer through nnx.split / merge (and
lax.scan with `scan_layers`), so qwix creates the adapters on a temporary copy and loses them
(qwix 0.1.8 fails there: the copy has no rngs), and with a quantised base it falls back to
matching by shape, which cannot tell query / key / value apart. qwix is used here for the
quantisation numerics (`qwix.quantize` / `qwix.dequantize`: NF4 code book, int4 / int8,
per-channel or tiled absmax scales), and its LoRA conventions are kept.

Trade-off of folding the update into the kernel: the backward pass forms the kernel-sized
gradient once per step (compute as in full fine-tuning); memory keeps LoRA's savings (optimizer
state for adapters only, 4-bit or 8-bit base). Adapter dropout cannot be expressed this way
(there is no separate adapter input), so `LoraSpec.dropout` must be 0; the model's own dropout
still applies.

Kernels are split into input and output axes by their logical names: a kernel whose first axis
(after a scanned 'layers' axis) is 'embed' maps embed -> rest, one whose last axis is 'embed'
maps rest -> embed, as Hugging Face's Linear layers do (so the rank-r structure is PEFT's).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import qwix
from flax import nnx

ADAPTER = nnx.LoRAParam  # nnx filter of the trainable (adapter) parameters
QTYPES: tuple[str, ...] = ("none", "nf4", "int4", "int8")
_QWIX_QTYPE: dict[str, Any] = {"nf4": "nf4", "int4": jnp.int4, "int8": jnp.int8}
# Attention and MLP kernels of our T5 (wi / wi_0 / wi_1 / wo) and decoder-only students
# (gate / up / down); embeddings, position tables, biases, norms and the LM head stay frozen.
DEFAULT_TARGET = r".*/(query|key|value|out|wi|wi_0|wi_1|wo|gate|up|down)"
_LAYER_AXIS = "layers"
_PIVOT_AXIS = "embed"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how.

    rank, alpha: the update is (alpha / rank) * A @ B with A [in..., rank], B [rank, out...].
    dropout: must be 0.0 (see the module docstring); kept so configs name it explicitly.
    target: regex, fully matched against each parameter path 'encoder/layers/0/mlp/wi'
        (scanned layers have no layer index: 'encoder/layers/mlp/wi').
    base_qtype: 'none' (LoRA: float base) or 'nf4' / 'int4' / 'int8' (QLoRA: quantised base).
    tile_size: QLoRA block size along the kernel's last input axis (one absmax scale per
        block and output channel; QLoRA's paper uses 64; one block per head where it does not
        divide head_dim); None: one scale per output channel.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target: str = DEFAULT_TARGET
    base_qtype: str = "none"
    tile_size: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoraSpec.rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)):
            raise ValueError(f"LoraSpec.alpha must be a finite number, got {self.alpha!r}")
        if self.alpha <= 0:
            raise ValueError(f"LoraSpec.alpha must be positive, got {self.alpha!r}")
        if self.dropout != 0.0:
            raise ValueError(
                f"LoraSpec.dropout must be 0.0 (adapters are folded into the kernel, so there "
                f"is no adapter input to drop; the model's dropout still applies), got "
                f"{self.dropout!r}"
            )
        if self.base_qtype not in QTYPES:
            raise ValueError(
                f"LoraSpec.base_qtype must be one of {QTYPES}, got {self.base_qtype!r}"
            )
        try:
            re.compile(self.target)
        except (re.error, TypeError) as error:
            raise ValueError(
                f"LoraSpec.target is not a valid regex: {self.target!r} ({error})"
            ) from None
        if self.tile_size is not None:
            if self.base_qtype == "none":
                raise ValueError("LoraSpec.tile_size applies to a quantised base only")
            if (
                isinstance(self.tile_size, bool)
                or not isinstance(self.tile_size, int)
                or self.tile_size <= 0
            ):
                raise ValueError(
                    f"LoraSpec.tile_size must be a positive integer or None, got {self.tile_size!r}"
                )

    @property
    def scaling(self) -> float:
        return float(self.alpha) / self.rank


class QuantizedWeight(nnx.Variable):
    """Frozen storage of a quantised base kernel (not an nnx.Param: never trained)."""


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Axes of one kernel: `batch` leading (scanned layer) axes, then `num_in` input axes."""

    axes: tuple[str | None, ...]
    batch: int
    num_in: int

    @property
    def in_axes(self) -> tuple[int, ...]:
        return tuple(range(self.batch, self.batch + self.num_in))

    @property
    def out_axes(self) -> tuple[int, ...]:
        return tuple(range(self.batch + self.num_in, len(self.axes)))


def _axis_names(param: nnx.Variable) -> tuple[str | None, ...] | None:
    metadata = param.get_metadata()
    names = metadata.get("out_sharding", metadata.get("sharding_names"))
    return None if names is None else tuple(names)


def _layout(path: str, param: nnx.Variable) -> _Layout:
    names = _axis_names(param)
    if names is None or len(names) != param.ndim:
        raise ValueError(f"LoraSpec.target matches {path}, which has no logical axis names")
    batch = 1 if names and names[0] == _LAYER_AXIS else 0
    rest = names[batch:]
    if len(rest) >= 2 and rest[0] == _PIVOT_AXIS:
        return _Layout(names, batch, 1)
    if len(rest) >= 2 and rest[-1] == _PIVOT_AXIS:
        return _Layout(names, batch, len(rest) - 1)
    raise ValueError(
        f"LoraSpec.target matches {path} (axes {names}), which is not a kernel with an "
        f"'{_PIVOT_AXIS}' input or output axis"
    )


def _quantize(value: jax.Array, layout: _Layout, spec: LoraSpec, path: str) -> Any:
    """qwix absmax quantisation with one scale per output channel and input block.

    Blocks run along the last input axis. A multi-axis input whose last axis the tile does not
    divide (an attention out kernel [heads, head_dim, embed] with head_dim 96 and tile 64, as
    in Phi-3) gets one block per head instead: scales per (head, output channel).
    """
    channelwise = tuple(range(layout.batch)) + layout.out_axes
    last_in = layout.in_axes[-1]
    tiled = {}
    if spec.tile_size is not None:
        if value.shape[last_in] % spec.tile_size == 0:
            tiled = {last_in: spec.tile_size}
        elif layout.num_in > 1:
            channelwise += layout.in_axes[:-1]
        else:
            raise ValueError(
                f"LoraSpec.tile_size {spec.tile_size} does not divide axis {last_in} "
                f"(size {value.shape[last_in]}) of {path}"
            )
    return qwix.quantize(
        value, _QWIX_QTYPE[spec.base_qtype], channelwise_axes=channelwise, tiled_axes=tiled
    )


class LoraKernel(nnx.Module):
    """A frozen base kernel plus a trainable rank-r update; `kernel[...]` is the sum."""

    def __init__(
        self, base: nnx.Param, layout: _Layout, spec: LoraSpec, path: str, *, rngs: nnx.Rngs
    ):
        value = base.get_value()
        # Static, hashable copy of the base's metadata (logical axes etc.) for merge_lora.
        self.base_metadata = tuple(sorted(base.get_metadata().items()))
        self.scaling = spec.scaling
        self.qtype = spec.base_qtype
        self.num_in = layout.num_in  # leading axes beyond these are scanned-layer axes
        names = layout.axes
        if spec.base_qtype == "none":
            self.base = base
        else:
            quantized = _quantize(value, layout, spec, path)
            scale_names = tuple(
                None if size == 1 else name
                for name, size in zip(names, quantized.scale.shape, strict=True)
            )
            self.qvalue = QuantizedWeight(quantized.qvalue, out_sharding=names)
            self.scale = QuantizedWeight(quantized.scale, out_sharding=scale_names)
        shape = value.shape
        batch_shape, batch_names = shape[: layout.batch], names[: layout.batch]
        in_shape = tuple(shape[i] for i in layout.in_axes)
        out_shape = tuple(shape[i] for i in layout.out_axes)
        a_shape = (*batch_shape, *in_shape, spec.rank)
        init_a = jax.nn.initializers.he_uniform(
            in_axis=tuple(range(layout.batch, layout.batch + layout.num_in)),
            out_axis=-1,
            batch_axis=tuple(range(layout.batch)),
        )
        self.lora_a = nnx.LoRAParam(
            init_a(rngs.params(), a_shape, value.dtype),
            out_sharding=(*batch_names, *(names[i] for i in layout.in_axes), None),
        )
        self.lora_b = nnx.LoRAParam(
            jnp.zeros((*batch_shape, spec.rank, *out_shape), value.dtype),
            out_sharding=(*batch_names, None, *(names[i] for i in layout.out_axes)),
        )

    def base_value(self) -> jax.Array:
        """The frozen base kernel (dequantised for QLoRA); no gradient flows into it."""
        if self.qtype == "none":
            value = self.base.get_value()
        else:
            quantized = qwix.QArray(
                self.qvalue.get_value(), self.scale.get_value(), None, _QWIX_QTYPE[self.qtype]
            )
            value = qwix.dequantize(quantized)
        return jax.lax.stop_gradient(value)

    def delta(self) -> jax.Array:
        """(alpha / rank) * A @ B in the kernel's shape."""
        a, b = self.lora_a.get_value(), self.lora_b.get_value()
        batch = a.ndim - 1 - self.num_in  # 1 for a stacked layer, 0 inside lax.scan
        batch_shape = a.shape[:batch]
        in_shape, out_shape = a.shape[batch:-1], b.shape[batch + 1 :]
        rank = a.shape[-1]
        a2 = a.reshape(*batch_shape, math.prod(in_shape), rank)
        b2 = b.reshape(*batch_shape, rank, math.prod(out_shape))
        product = jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST)
        return (product * jnp.asarray(self.scaling, product.dtype)).reshape(
            *batch_shape, *in_shape, *out_shape
        )

    def effective(self) -> jax.Array:
        base = self.base_value()
        return base + self.delta().astype(base.dtype)

    def __getitem__(self, index: Any) -> jax.Array:
        return self.effective()[index]

    @property
    def shape(self) -> tuple[int, ...]:
        batch = self.lora_a.ndim - 1 - self.num_in
        return tuple(self.lora_a.shape[:-1]) + tuple(self.lora_b.shape[batch + 1 :])


def _path_string(path: tuple[Any, ...]) -> str:
    return "/".join(str(part) for part in path)


def _param_sites(model: nnx.Module) -> list[tuple[str, nnx.Module, str, Any]]:
    """(path, owning module, attribute, value) of every direct attribute of every module."""
    sites = []
    for module_path, module in model.iter_modules():
        for name, value in vars(module).items():
            sites.append((_path_string((*module_path, name)), module, name, value))
    return sites


def apply_lora(model: nnx.Module, spec: LoraSpec, *, rngs: nnx.Rngs) -> nnx.Module:
    """Adapts `model` in place (and returns it): matching kernels become `LoraKernel`s.

    Works on concrete models and inside `nnx.eval_shape` (for AOT memory checks). Raises a
    ValueError naming `LoraSpec.target` when it matches no parameter.
    """
    candidates = [
        site
        for site in _param_sites(model)
        if isinstance(site[3], nnx.Param) and not isinstance(site[3], nnx.LoRAParam)
    ]
    matched = [site for site in candidates if re.fullmatch(spec.target, site[0])]
    if not matched:
        sample = ", ".join(site[0] for site in candidates[:6])
        raise ValueError(
            f"LoraSpec.target {spec.target!r} matches no parameter of "
            f"{type(model).__name__} (parameters look like: {sample}, ...)"
        )
    for path, module, name, param in matched:
        setattr(module, name, LoraKernel(param, _layout(path, param), spec, path, rngs=rngs))
    return model


def lora_kernels(model: nnx.Module) -> dict[str, LoraKernel]:
    """Every LoraKernel of `model` by parameter path."""
    return {
        path: value for path, _, _, value in _param_sites(model) if isinstance(value, LoraKernel)
    }


def split_adapters(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, adapters, everything else): train `adapters`, keep the rest frozen.

    `nnx.merge(graphdef, adapters, rest)` rebuilds the model. The adapters are also what an
    adapters-only checkpoint holds.
    """
    graphdef, adapters, rest = nnx.split(model, ADAPTER, ...)
    return graphdef, adapters, rest


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of `model` whose LoraKernels are plain `nnx.Param`s holding the effective kernel.

    Each keeps its base's metadata (logical axis names), so the result has the structure of the
    un-adapted model and the existing export code (e.g. `save_hf_t5`) writes it as is.
    """
    merged = nnx.clone(model)
    for _, module, name, kernel in _param_sites(merged):
        if isinstance(kernel, LoraKernel):
            value = kernel.effective()
            setattr(module, name, nnx.Param(value, **dict(kernel.base_metadata)))
    return merged
