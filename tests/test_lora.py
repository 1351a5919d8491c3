"""LoRA / QLoRA students (sbsd_jax/model/lora.py): what trains, what is frozen, merge, QLoRA
error, adapters-only checkpoints, sharding metadata, bad specs. Tiny T5 on CPU."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from sbsd_jax.model import lora, sharding
from sbsd_jax.model.config import get_model_config
from sbsd_jax.model.hf_checkpoint import load_hf_t5_model, save_hf_t5
from sbsd_jax.model.t5 import T5

VOCAB = 64
NF4 = lora.LoraSpec(rank=4, alpha=8.0, base_qtype="nf4", tile_size=16)
INT8 = lora.LoraSpec(rank=4, alpha=8.0, base_qtype="int8")
PLAIN = lora.LoraSpec(rank=4, alpha=8.0)
# One student with both kinds of frozen base: nf4 attention kernels, float MLP kernels.
MIXED = (
    dataclasses.replace(NF4, target=r".*/(query|key|value|out)"),
    dataclasses.replace(PLAIN, target=r".*/(wi_0|wi_1|wo)"),
)


def _config(scan_layers: bool = False):
    return get_model_config(
        "t5_v1_1_tiny",
        vocab_size=VOCAB,
        num_encoder_layers=1,
        num_decoder_layers=1,
        dropout_rate=0.0,
        scan_layers=scan_layers,
    )


def _fresh(parts: tuple[nnx.GraphDef, nnx.State]) -> nnx.Module:
    """A new model object over the same (immutable) arrays: tests may mutate it freely."""
    graphdef, state = parts
    return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))


@functools.cache
def _base_parts(scan_layers: bool) -> tuple[nnx.GraphDef, nnx.State]:
    return nnx.split(T5(_config(scan_layers), rngs=nnx.Rngs(0)))


@functools.cache
def _adapted_parts(specs: lora.LoraSpec | tuple[lora.LoraSpec, ...], scan_layers: bool, seed: int):
    model = _base(scan_layers)
    for spec in specs if isinstance(specs, tuple) else (specs,):
        model = lora.apply_lora(model, spec, rngs=nnx.Rngs(seed))
    return nnx.split(model)


def _base(scan_layers: bool = False) -> T5:
    """The tiny float T5 (built once per layout; eager construction is slow on a busy CPU)."""
    return _fresh(_base_parts(scan_layers))


def _adapted(
    specs: lora.LoraSpec | tuple[lora.LoraSpec, ...], scan_layers: bool = False, seed: int = 1
) -> T5:
    return _fresh(_adapted_parts(specs, scan_layers, seed))


@pytest.fixture(scope="module")
def batch() -> dict[str, jax.Array]:
    keys = jax.random.split(jax.random.key(7), 3)
    return {
        "enc": jax.random.randint(keys[0], (2, 6), 2, VOCAB),
        "dec": jax.random.randint(keys[1], (2, 4), 2, VOCAB),
        "targets": jax.random.randint(keys[2], (2, 4), 2, VOCAB),
    }


@functools.partial(jax.jit, static_argnums=(0,))
def _logits(graphdef, state, batch):
    return nnx.merge(graphdef, state)(batch["enc"], batch["dec"])


def _forward(model: nnx.Module, batch) -> jax.Array:
    graphdef, state = nnx.split(model)
    return _logits(graphdef, state, batch)


def _perturb_adapters(model: nnx.Module, scale: float) -> None:
    """Trained-looking adapters: B is zero at init (numpy draws: no per-shape JAX compiles)."""
    draws = np.random.default_rng(0)
    for kernel in lora.lora_kernels(model).values():
        b = kernel.lora_b
        b.set_value(jnp.asarray(scale * draws.standard_normal(b.shape), b.get_value().dtype))


def _flat(state: nnx.State) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(state)}


def _assert_bitwise(a: nnx.State, b: nnx.State) -> None:
    flat_a, flat_b = _flat(a), _flat(b)
    assert flat_a.keys() == flat_b.keys()
    for path in flat_a:
        assert flat_a[path].dtype == flat_b[path].dtype, path
        np.testing.assert_array_equal(flat_a[path], flat_b[path], err_msg=str(path))


def _tx() -> optax.GradientTransformation:
    return optax.adamw(1e-2, weight_decay=0.1)  # decay would move a base it could see


@nnx.jit
def _train_step(model: T5, optimizer: nnx.Optimizer, batch) -> None:
    """Gradients of the adapters only, and an optimizer that holds and updates only them."""

    def loss(model):
        logits = model(batch["enc"], batch["dec"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"]).mean()

    grads = nnx.grad(loss, argnums=nnx.DiffState(0, lora.ADAPTER))(model)
    optimizer.update(model, grads)


@pytest.fixture(scope="module")
def run(batch):
    """The MIXED student's model and optimizer state before and after each of two steps."""
    model = _adapted(MIXED)
    optimizer = nnx.Optimizer(model, _tx(), wrt=lora.ADAPTER)
    states, opt_states = [nnx.clone(nnx.state(model))], [nnx.clone(nnx.state(optimizer))]
    for _ in range(2):
        _train_step(model, optimizer, batch)
        states.append(nnx.clone(nnx.state(model)))
        opt_states.append(nnx.clone(nnx.state(optimizer)))
    return dict(states=states, opt_states=opt_states)


# ----------------------------------------------------------------------------- what trains


def test_a_step_changes_every_adapter_and_nothing_else(run):
    states = run["states"]
    before, after = _flat(states[0]), _flat(states[1])
    assert before.keys() == after.keys()
    adapters = {path for path, _ in nnx.to_flat_state(nnx.state(states[0], lora.ADAPTER))}
    assert adapters and all(path[-1] in ("lora_a", "lora_b") for path in adapters)
    for path in before:
        if path in adapters:
            assert not np.array_equal(before[path], after[path]), path
        else:  # float or quantised base, norms, embeddings: bitwise equal (even under decay)
            assert before[path].dtype == after[path].dtype, path
            np.testing.assert_array_equal(before[path], after[path], err_msg=str(path))
    # Both kinds of frozen base were there: nf4 codes (attention), float kernels (MLP).
    kinds = {(path[-2], path[-1]) for path in before if path[-1] in ("qvalue", "base")}
    assert kinds == {(k, "qvalue") for k in ("query", "key", "value", "out")} | {
        (k, "base") for k in ("wi_0", "wi_1", "wo")
    }
    assert all(v.dtype == jnp.uint4 for path, v in before.items() if path[-1] == "qvalue")


def test_optimizer_state_holds_only_adapter_shaped_leaves(run):
    adapter_shapes = [v.shape for v in _flat(nnx.state(run["states"][0], lora.ADAPTER)).values()]
    leaves = list(_flat(run["opt_states"][1]).values())
    # AdamW keeps mu and nu per adapter, plus scalar step counts: nothing of the base's size.
    assert sorted(x.shape for x in leaves if x.ndim > 0) == sorted(adapter_shapes * 2)
    assert sum(x.size for x in leaves) < 0.3 * sum(x.size for x in _flat(run["states"][0]).values())


def test_split_adapters_separates_the_trainable_state():
    model = _adapted(PLAIN)
    graphdef, adapters, rest = lora.split_adapters(model)
    assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(adapters))
    assert not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(rest))
    _assert_bitwise(nnx.state(nnx.merge(graphdef, adapters, rest)), nnx.state(model))


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize(
    "spec, scan_layers", [(PLAIN, False), (NF4, True)], ids=["lora", "qlora_nf4_scanned"]
)
def test_merged_model_equals_adapted_model(batch, spec, scan_layers):
    model = _adapted(spec, scan_layers)
    _perturb_adapters(model, 0.05)
    merged = lora.merge_lora(model)
    plain = _base(scan_layers)
    # Same structure and logical axes as the un-adapted model: export code sees a plain T5.
    assert nnx.graphdef(merged) == nnx.graphdef(plain)
    assert nnx.get_partition_spec(nnx.state(merged)) == nnx.get_partition_spec(nnx.state(plain))
    adapted_logits, merged_logits = _forward(model, batch), _forward(merged, batch)
    assert not np.allclose(adapted_logits, _forward(plain, batch), atol=1e-3)
    # Both run the same float32 kernel W + (alpha/rank) A @ B: the adapted model forms it inside
    # the jitted forward, merge_lora eagerly, so only XLA's fusion order may differ (a few ulp).
    np.testing.assert_allclose(merged_logits, adapted_logits, rtol=1e-5, atol=1e-5)


def test_merged_model_exports_to_hf_and_loads_back(batch, tmp_path):
    model = _adapted(PLAIN)
    _perturb_adapters(model, 0.01)
    merged = lora.merge_lora(model)
    save_hf_t5(merged, _config(), tmp_path / "hf")
    loaded, _ = load_hf_t5_model(tmp_path / "hf", vocab_size=VOCAB, dropout_rate=0.0)
    _assert_bitwise(nnx.state(loaded, nnx.Param), nnx.state(merged, nnx.Param))


# ----------------------------------------------------------------------------- QLoRA error

# NF4 codes span [-1, 1] of each block's absmax with a widest gap of 1 - 0.6961928 (between
# its two most negative codes), so rounding moves a weight by at most 0.1519 x absmax; int8 absmax
# rounding moves it by at most half a step, absmax / 255. (1e-6 slack for float32 division.)
_WEIGHT_ERROR = {"nf4": (1.0 - 0.6961928) / 2 + 1e-6, "int8": 0.5 / 127.5 + 1e-6}
# RMS error of the QLoRA model's logits (B = 0) against the float model's, relative to their
# RMS: measured 1.0% (int8, per channel) and 14.7% (nf4, blocks of 16) on this random model of
# 18 kernels. The limits allow 3x that: they catch a lost scale or a wrong code book (errors of
# order 100%), not small drifts; the weight bounds above are the exact check.
_LOGIT_ERROR = {"nf4": 0.45, "int8": 0.03}


def _absmax(w: np.ndarray, in_axes: tuple[int, ...], tile: int | None) -> np.ndarray:
    """Each weight's quantisation absmax: over the input axes per output channel, or over
    blocks of `tile` along the last input axis (and the other input axes)."""
    if tile is None:
        return np.broadcast_to(np.abs(w).max(axis=in_axes, keepdims=True), w.shape)
    last = in_axes[-1]
    split = w.reshape(*w.shape[:last], w.shape[last] // tile, tile, *w.shape[last + 1 :])
    block = np.abs(split).max(axis=(*in_axes[:-1], last + 1), keepdims=True)
    return np.broadcast_to(block, split.shape).reshape(w.shape)


@pytest.mark.parametrize("spec", [NF4, INT8], ids=["nf4", "int8"])
def test_qlora_base_is_the_dequantised_model_within_the_quantisation_error(batch, spec):
    float_model = _base()
    quantised = _adapted(spec)
    kernels = lora.lora_kernels(quantised)
    float_kernels = {
        "/".join(map(str, path)): np.asarray(v.get_value())
        for path, v in nnx.to_flat_state(nnx.state(float_model, nnx.Param))
    }
    dequantised_model = _base()
    for path, kernel in kernels.items():
        dequantised = np.asarray(kernel.base_value())
        original = float_kernels[path]
        in_axes = (0, 1) if path.endswith("/out") else (0,)
        absmax = _absmax(original, in_axes, spec.tile_size)
        error = np.abs(dequantised - original)
        assert np.all(error <= _WEIGHT_ERROR[spec.base_qtype] * absmax + 1e-7), path
        assert np.any(error > 0), path
        module = dequantised_model
        *parents, name = path.split("/")
        for part in parents:
            module = module[int(part)] if part.isdigit() else getattr(module, part)
        getattr(module, name).set_value(jnp.asarray(dequantised))
    qlora_logits = _forward(quantised, batch)
    # B = 0 at init: the QLoRA model is exactly the dequantised model (same float32 kernels).
    np.testing.assert_allclose(
        qlora_logits, _forward(dequantised_model, batch), rtol=1e-5, atol=1e-5
    )
    float_logits = np.asarray(_forward(float_model, batch))
    relative = np.sqrt(np.mean((qlora_logits - float_logits) ** 2) / np.mean(float_logits**2))
    assert 0 < relative < _LOGIT_ERROR[spec.base_qtype]


# ----------------------------------------------------------------------------- checkpoints


def test_adapters_only_checkpoint_round_trips_and_resumes_bitwise(run, batch, tmp_path):
    trained = nnx.state(run["states"][1], lora.ADAPTER)
    saved = {"adapters": nnx.to_pure_dict(trained), "opt": nnx.to_pure_dict(run["opt_states"][1])}
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "adapters", saved)
    checkpointer.wait_until_finished()

    # A new process: the same base (rebuilt from its float weights and re-quantised), adapters
    # initialised from another seed, then the adapters-only checkpoint restored over them.
    model = _adapted(MIXED, seed=99)
    optimizer = nnx.Optimizer(model, _tx(), wrt=lora.ADAPTER)
    _assert_bitwise(
        nnx.state(model, nnx.Not(lora.ADAPTER)), nnx.state(run["states"][1], nnx.Not(lora.ADAPTER))
    )
    fresh = nnx.state(model, lora.ADAPTER)
    assert not any(
        np.array_equal(a, b)
        for a, b in zip(_flat(fresh).values(), _flat(trained).values(), strict=True)
    )
    target = jax.tree.map(
        ocp.utils.to_shape_dtype_struct,
        {"adapters": nnx.to_pure_dict(fresh), "opt": nnx.to_pure_dict(nnx.state(optimizer))},
    )
    restored = checkpointer.restore(tmp_path / "adapters", target)
    nnx.replace_by_pure_dict(fresh, restored["adapters"])
    opt_state = nnx.state(optimizer)
    nnx.replace_by_pure_dict(opt_state, restored["opt"])
    nnx.update(model, fresh)
    nnx.update(optimizer, opt_state)
    _assert_bitwise(nnx.state(model), run["states"][1])
    _assert_bitwise(nnx.state(optimizer), run["opt_states"][1])

    _train_step(model, optimizer, batch)
    _assert_bitwise(nnx.state(model), run["states"][2])
    _assert_bitwise(nnx.state(optimizer), run["opt_states"][2])


# ----------------------------------------------------------------------------- sharding


def _names(variable: nnx.Variable) -> tuple:
    return tuple(variable.get_metadata()["out_sharding"])


@pytest.mark.parametrize("scan_layers", [False, True])
def test_adapters_and_quantised_base_inherit_the_base_logical_axes(scan_layers):
    plain = _base(scan_layers)
    adapted = _adapted(NF4, scan_layers)
    base_attention = plain.encoder.layers if scan_layers else plain.encoder.layers[0]
    attention = adapted.encoder.layers if scan_layers else adapted.encoder.layers[0]
    lead = ("layers",) if scan_layers else ()
    query, out = attention.self_attention.query, attention.self_attention.out
    assert _names(base_attention.self_attention.query) == (*lead, "embed", "heads", "kv")
    assert _names(query.lora_a) == (*lead, "embed", None)
    assert _names(query.lora_b) == (*lead, None, "heads", "kv")
    assert _names(out.lora_a) == (*lead, "heads", "kv", None)
    assert _names(out.lora_b) == (*lead, None, "embed")
    assert _names(query.qvalue) == (*lead, "embed", "heads", "kv")
    # One scale per block of 16 inputs and output channel; axes of size 1 (the single scanned
    # layer here) carry no sharding, as in qwix.
    assert query.scale.shape == (*(1,) * len(lead), 64 // 16, 4, 16)
    assert _names(query.scale) == (*(None,) * len(lead), "embed", "heads", "kv")
    assert _names(attention.mlp.wo.lora_a) == (*lead, "mlp", None)
    layers = nnx.to_pure_dict(nnx.state(adapted))["encoder"]["layers"]
    assert ("self_attention" in layers) == scan_layers and (0 in layers) != scan_layers


def test_sharded_on_eight_devices_like_the_base_and_same_logits(batch):
    """Placed by the trainer's rules on a data x fsdp x tensor mesh (conftest: 8 CPU devices),
    each adapter is split like its kernel's axes and the logits are the single-device ones."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS from conftest)")
    model = _adapted(NF4)
    _perturb_adapters(model, 0.05)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), sharding.MESH_AXES)
    rules = sharding.DEFAULT_LOGICAL_AXIS_RULES
    graphdef, state = nnx.split(model)
    placed = jax.device_put(state, sharding.tree_shardings(state, mesh, rules))
    query = placed["encoder"]["layers"][0]["self_attention"]["query"]
    P = jax.sharding.PartitionSpec
    specs = {name: query[name].get_value().sharding.spec for name in query}
    assert specs == {
        "qvalue": P("fsdp", "tensor", None),  # the base's ('embed', 'heads', 'kv')
        "scale": P("fsdp", "tensor", None),
        "lora_a": P("fsdp", None),
        "lora_b": P(None, "tensor", None),
    }
    activations = sharding.ActivationSharding(mesh, rules)
    logits = _sharded_logits(graphdef, placed, batch, activations)
    np.testing.assert_allclose(logits, _forward(model, batch), rtol=1e-5, atol=1e-5)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _sharded_logits(graphdef, state, batch, activations):
    with sharding.activation_sharding(activations):
        return nnx.merge(graphdef, state)(batch["enc"], batch["dec"])


def test_a_tile_that_does_not_divide_head_dim_gives_one_block_per_head():
    spec = dataclasses.replace(NF4, tile_size=32, target=r".*/self_attention/(query|out)")
    attention = _adapted(spec).encoder.layers[0].self_attention
    assert attention.query.scale.shape == (64 // 32, 4, 16)  # d_model in blocks of 32
    assert attention.out.scale.shape == (4, 1, 64)  # [heads, head_dim 16, embed]: per head
    assert _names(attention.out.scale) == ("heads", None, "embed")


def test_int8_per_channel_scale_is_replicated_along_the_reduced_axis():
    attention = _adapted(INT8).encoder.layers[0].self_attention
    assert attention.query.scale.shape == (1, 4, 16)
    assert _names(attention.query.scale) == (None, "heads", "kv")
    assert attention.query.qvalue.get_value().dtype == jnp.int8


# ----------------------------------------------------------------------------- decoder-only


def test_decoder_only_student_adapts_the_same_way(batch):
    decoder_only = pytest.importorskip("sbsd_jax.model.decoder_only.transformer")
    from sbsd_jax.model.decoder_only.config import get_decoder_config

    config = get_decoder_config("llama_tiny", vocab_size=VOCAB, num_layers=1)
    base = decoder_only.DecoderOnlyLM(config, rngs=nnx.Rngs(0))
    model = lora.apply_lora(nnx.clone(base), NF4, rngs=nnx.Rngs(1))
    kernels = {path.rsplit("/", 1)[-1] for path in lora.lora_kernels(model)}
    assert kernels == {"query", "key", "value", "out", "gate", "up", "down"}
    tokens = batch["enc"]
    _perturb_adapters(model, 0.02)
    merged = lora.merge_lora(model)
    assert nnx.graphdef(merged) == nnx.graphdef(base)
    np.testing.assert_allclose(
        nnx.jit(lambda m: m(tokens))(merged),
        nnx.jit(lambda m: m(tokens))(model),
        rtol=1e-5,
        atol=1e-5,
    )


# ----------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"rank": 0}, "rank"),
        ({"rank": -2}, "rank"),
        ({"alpha": 0.0}, "alpha"),
        ({"dropout": 0.1}, "dropout"),
        ({"base_qtype": "fp4"}, "base_qtype"),
        ({"target": "(unclosed"}, "target"),
        ({"tile_size": 0, "base_qtype": "nf4"}, "tile_size"),
        ({"tile_size": 64}, "tile_size"),
    ],
)
def test_bad_spec_fields_raise_a_short_error_naming_the_field(fields, field):
    with pytest.raises(ValueError, match=rf"^LoraSpec\.{field}") as error:
        lora.LoraSpec(**fields)
    assert "\n" not in str(error.value)


def test_target_matching_nothing_or_a_non_kernel_names_the_field():
    with pytest.raises(ValueError, match=r"^LoraSpec\.target 'nothing/.*' matches no parameter"):
        lora.apply_lora(_base(), dataclasses.replace(PLAIN, target="nothing/.*"), rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match=r"^LoraSpec\.target matches .*relative_position_bias/embedding"
    ):
        lora.apply_lora(_base(), dataclasses.replace(PLAIN, target=".*embedding"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"^LoraSpec\.tile_size 7 does not divide"):
        lora.apply_lora(_base(), dataclasses.replace(NF4, tile_size=7), rngs=nnx.Rngs(0))
