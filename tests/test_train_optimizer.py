"""Scanned layers (one [layers, ...] array per layer kind) get, layer by layer, the optimizer
updates that unscanned layers get. Adafactor reduces over whole parameters (block-RMS clipping,
parameter scale, factored second moments); with scan_layers its 'layers' axis is a batch axis,
as in T5X, so a small-scale layer stacked with a large-scale one is not updated at their mixed
scale. AdamW is elementwise and must be unaffected."""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import sbsd_jax.model.sharding  # noqa: F401  (variables keep logical names as metadata only)
from sbsd_jax.settings import from_config
from sbsd_jax.train import optimizer as optimizer_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
LAYER_SCALES = (0.01, 1.0)  # the reviewer's case: two layers at very different weight scales
STEPS = 4

# name -> (per-layer shape, per-layer logical names); wi is factored (both dims >= 128), the
# small 3-D attention kernel is not, the larger one is (heads x kv joined: 256), the norm scale
# is a vector (a [layers, d] matrix stacked).
LAYER_PARAMS: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {
    "wi": ((128, 256), ("embed", "mlp")),
    "query": ((16, 4, 8), ("embed", "heads", "kv")),
    "key": ((128, 4, 64), ("embed", "heads", "kv")),  # factored with heads and kv joined
    "norm": ((128,), ("embed",)),
}


def optimizer_config(name: str, weight_decay: float) -> ml_collections.ConfigDict:
    spec = importlib.util.spec_from_file_location("base_config", CONFIGS / "base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.optimizer = name
    config.learning_rate = 1e-2
    config.lr_schedule = "constant"
    config.weight_decay = weight_decay
    config.grad_clip_norm = 1.0
    return config


def param(value: Any, names: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(jnp.asarray(value, jnp.float32), out_sharding=names)


def layer_values(rng: np.random.Generator, scales: tuple[float, ...]) -> list[dict[str, Any]]:
    values = []
    for scale in scales:
        layer = {}
        for name, (shape, _) in LAYER_PARAMS.items():
            base = 1.0 + 0.1 * rng.normal(size=shape) if name == "norm" else rng.normal(size=shape)
            layer[name] = scale * base
        values.append(layer)
    return values


def unscanned_tree(layers: list[dict[str, Any]], final_norm: Any) -> dict[str, Any]:
    return {
        "layers": {
            i: {name: param(layer[name], LAYER_PARAMS[name][1]) for name in LAYER_PARAMS}
            for i, layer in enumerate(layers)
        },
        "final_norm": param(final_norm, ("embed",)),
    }


def scanned_tree(layers: list[dict[str, Any]], final_norm: Any) -> dict[str, Any]:
    return {
        "layers": {
            name: param(np.stack([layer[name] for layer in layers]), ("layers", *names))
            for name, (_, names) in LAYER_PARAMS.items()
        },
        "final_norm": param(final_norm, ("embed",)),
    }


def array(node: Any) -> np.ndarray:
    return np.asarray(node.get_value() if isinstance(node, nnx.Variable) else node)


def run_both(config: ml_collections.ConfigDict, steps: int = STEPS):
    """The same parameters and gradients, unscanned and scanned, through make_optimizer(config):
    per step, the updates of each layout, and the final optimizer states."""
    rng = np.random.default_rng(0)
    layers = layer_values(rng, LAYER_SCALES)
    final_norm = 1.0 + 0.1 * rng.normal(size=(128,))
    unscanned = unscanned_tree(layers, final_norm)
    scanned = scanned_tree(layers, final_norm)
    optimizer = optimizer_lib.make_optimizer(from_config.optimizer_spec(config))
    update = jax.jit(optimizer.update)
    unscanned_state, scanned_state = optimizer.init(unscanned), optimizer.init(scanned)
    history = []
    for _ in range(steps):
        # Gradients at each layer's own scale (and a few large ones, so clipping matters).
        grad_layers = layer_values(rng, tuple(s * 3.0 for s in LAYER_SCALES))
        grad_norm = rng.normal(size=(128,))
        unscanned_updates, unscanned_state = update(
            unscanned_tree(grad_layers, grad_norm), unscanned_state, unscanned
        )
        scanned_updates, scanned_state = update(
            scanned_tree(grad_layers, grad_norm), scanned_state, scanned
        )
        unscanned = optax.apply_updates(unscanned, unscanned_updates)
        scanned = optax.apply_updates(scanned, scanned_updates)
        history.append((unscanned_updates, scanned_updates))
    return history, unscanned_state, scanned_state


def assert_layers_match(unscanned: dict[str, Any], scanned: dict[str, Any]) -> None:
    """Layer i of every stacked array equals the unscanned layer i (to float tolerance)."""
    for name in LAYER_PARAMS:
        stacked = array(scanned["layers"][name])
        for i in range(len(LAYER_SCALES)):
            expected = array(unscanned["layers"][i][name])
            scale = np.abs(expected).max()
            np.testing.assert_allclose(
                stacked[i], expected, rtol=1e-5, atol=1e-6 * scale, err_msg=f"{name}[{i}]"
            )
    np.testing.assert_allclose(
        array(scanned["final_norm"]), array(unscanned["final_norm"]), rtol=1e-5, atol=1e-9
    )


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x))))


def test_stacked_layers_are_found_by_their_logical_names():
    layers = layer_values(np.random.default_rng(0), LAYER_SCALES)
    flags = optimizer_lib.stacked_layers(scanned_tree(layers, np.ones(128)))
    assert all(array(flags["layers"][name]) for name in LAYER_PARAMS)
    assert not array(flags["final_norm"])
    unscanned = optimizer_lib.stacked_layers(unscanned_tree(layers, np.ones(128)))
    assert not any(jax.tree.leaves(unscanned))
    assert jax.tree.leaves(optimizer_lib.stacked_layers({"w": jnp.ones((2, 3))})) == [False]
    # Weight decay stays off norm scales, stacked [layers, d] ones included.
    mask = optimizer_lib._decay_mask(scanned_tree(layers, np.ones(128)))
    assert array(mask["layers"]["wi"]) and array(mask["layers"]["query"])
    assert not array(mask["layers"]["norm"]) and not array(mask["final_norm"])


def test_adafactor_updates_each_stacked_layer_like_its_unscanned_layer():
    # With weight decay: a stacked [layers, d] norm scale is a vector, so it is not decayed.
    history, unscanned_state, scanned_state = run_both(optimizer_config("adafactor", 1e-3))
    for unscanned_updates, scanned_updates in history:
        assert_layers_match(unscanned_updates, scanned_updates)
    # The reviewer's case: each layer moves at its own scale (update RMS 100x apart, like the
    # weights), not both at their mixed RMS.
    first = array(history[0][1]["layers"]["wi"])
    assert 0.005 < rms(first[0]) / rms(first[1]) < 0.02
    # Second-moment statistics (factored v_row / v_col, full v) = the per-layer ones stacked.
    unscanned_rms, scanned_rms = unscanned_state[1][0], scanned_state[1][0]
    assert isinstance(scanned_rms, optax.FactoredState)
    assert int(scanned_rms.count) == int(unscanned_rms.count) == STEPS
    for field in ("v_row", "v_col", "v"):
        for name in LAYER_PARAMS:
            per_layer = [array(getattr(unscanned_rms, field)["layers"][i][name]) for i in (0, 1)]
            np.testing.assert_allclose(
                array(getattr(scanned_rms, field)["layers"][name]),
                np.stack(per_layer),
                rtol=1e-5,
                err_msg=f"{field} {name}",
            )
    wi_v_row = array(scanned_rms.v_row["layers"]["wi"])
    assert wi_v_row.shape == (2, 128) and array(scanned_rms.v_col["layers"]["wi"]).shape == (2, 256)
    assert array(scanned_rms.v["layers"]["norm"]).shape == (2, 128)  # a vector per layer


def test_optax_adafactor_mixes_stacked_layers():
    """What the layer-aware chain fixes (guards the test above against a vacuous pass)."""
    layers = layer_values(np.random.default_rng(0), LAYER_SCALES)
    scanned = scanned_tree(layers, np.ones(128))
    grads = jax.tree.map(jnp.ones_like, scanned)
    optimizer = optax.adafactor(1e-2)
    updates, _ = jax.jit(optimizer.update)(grads, optimizer.init(scanned), scanned)
    wi = array(updates["layers"]["wi"])
    np.testing.assert_allclose(rms(wi[0]), rms(wi[1]), rtol=1e-6)


def without_joined_factoring(tree: dict[str, Any]) -> dict[str, Any]:
    """The tree without the kernel whose heads x kv are factored jointly (tested below)."""
    for layer in tree["layers"].values():
        del layer["key"]
    return tree


def test_adafactor_equals_optax_adafactor_on_unstacked_parameters():
    """Same chain as optax.adafactor: apart from attention kernels factored with heads and kv
    joined (tested separately), the unscanned model's training is unchanged."""
    rng = np.random.default_rng(1)
    params = without_joined_factoring(unscanned_tree(layer_values(rng, LAYER_SCALES), np.ones(128)))
    ours = optimizer_lib.adafactor(1e-2, weight_decay_rate=1e-3)
    reference = optax.adafactor(1e-2, weight_decay_rate=1e-3)
    ours_state, reference_state = ours.init(params), reference.init(params)
    for _ in range(3):
        grads = without_joined_factoring(
            unscanned_tree(layer_values(rng, LAYER_SCALES), rng.normal(size=(128,)))
        )
        ours_updates, ours_state = ours.update(grads, ours_state, params)
        reference_updates, reference_state = reference.update(grads, reference_state, params)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
            ours_updates,
            reference_updates,
        )
        params = optax.apply_updates(params, ours_updates)
    assert jax.tree.structure(ours_state) == jax.tree.structure(reference_state)


def test_adamw_is_unaffected_by_stacking():
    weight_decay = 0.1
    config = optimizer_config("adamw", weight_decay)
    history, _, _ = run_both(config, steps=3)
    for unscanned_updates, scanned_updates in history:
        assert_layers_match(unscanned_updates, scanned_updates)
    # Decoupled decay (x learning rate) on matrices; norm scales, stacked or not, never decayed.
    params = scanned_tree(layer_values(np.random.default_rng(0), LAYER_SCALES), np.ones(128))
    optimizer = optimizer_lib.make_optimizer(from_config.optimizer_spec(config))
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(optimizer.update)(zero, optimizer.init(params), params)
    assert not np.any(array(updates["layers"]["norm"]))
    assert not np.any(array(updates["final_norm"]))
    np.testing.assert_allclose(
        array(updates["layers"]["wi"]),
        -config.learning_rate * weight_decay * array(params["layers"]["wi"]),
        rtol=1e-6,
    )


def test_attention_kernels_are_factored_with_heads_and_kv_joined_as_t5x_does():
    """[embed, heads, kv] with heads and kv each below 128 would keep a full second moment;
    joined ([embed, heads*kv]) it is factored, and the update is optax's for that 2-D kernel."""
    rng = np.random.default_rng(0)
    query = rng.normal(size=(256, 4, 64)).astype(np.float32)
    out = rng.normal(size=(4, 64, 256)).astype(np.float32)
    grads = [rng.normal(size=a.shape).astype(np.float32) for a in (query, out)]
    params = {
        "query": param(query, ("embed", "heads", "kv")),
        "out": param(out, ("heads", "kv", "embed")),
    }
    updates = {
        "query": param(grads[0], ("embed", "heads", "kv")),
        "out": param(grads[1], ("heads", "kv", "embed")),
    }
    ours = optimizer_lib.adafactor(1e-2)
    state = ours.init(params)
    factored = state[0]
    assert factored.v_row["query"].value.shape == (256,)
    assert factored.v_col["query"].value.shape == (256,)
    assert factored.v_row["out"].value.shape == (256,)
    new, _ = ours.update(updates, state, params)

    reference = optax.adafactor(1e-2)
    for name, value, grad, shape in (
        ("query", query, grads[0], (256, 256)),
        ("out", out, grads[1], (256, 256)),
    ):
        flat = {name: jnp.asarray(value.reshape(shape))}
        expected, _ = reference.update(
            {name: jnp.asarray(grad.reshape(shape))}, reference.init(flat), flat
        )
        np.testing.assert_allclose(
            np.asarray(new[name].value), np.asarray(expected[name]).reshape(value.shape), rtol=1e-5
        )
