"""Logical axis names map onto a device mesh through a rules table (8 fake CPU devices)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sbsd_jax.model import sharding
from sbsd_jax.model.config import get_model_config
from sbsd_jax.model.t5 import T5

PARAM_RULES = (("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"), ("vocab", "tensor"))
ACTIVATION_RULES = (
    ("activation_batch", "fsdp"),
    ("activation_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    if jax.device_count() < 8:
        pytest.skip("needs 8 (fake) devices; tests/conftest.py sets XLA_FLAGS for that")
    return Mesh(np.asarray(jax.devices()[:8]).reshape(4, 2), ("fsdp", "tensor"))


def config(**overrides):
    return get_model_config("t5_v1_1_tiny", vocab_size=128, **overrides)


@pytest.mark.parametrize("scan_layers", [False, True])
def test_every_parameter_has_logical_names(scan_layers: bool) -> None:
    abstract = nnx.eval_shape(lambda: T5(config(scan_layers=scan_layers), rngs=nnx.Rngs(0)))
    for path, variable in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(variable.shape), path
        assert set(names) <= set(sharding.PARAM_AXES), path
        assert ("layers" in names) == (scan_layers and "layers" in path), path


def test_logical_param_specs_follow_the_rules_table() -> None:
    abstract = nnx.eval_shape(lambda: T5(config(scan_layers=True), rngs=nnx.Rngs(0)))
    specs = sharding.logical_param_specs(abstract, PARAM_RULES)
    assert specs["shared"].get_value() == PartitionSpec("tensor", "fsdp")
    assert specs["lm_head"].get_value() == PartitionSpec("fsdp", "tensor")
    layers = specs["encoder"]["layers"]
    assert layers["self_attention"]["query"].get_value() == PartitionSpec(
        None, "fsdp", "tensor", None
    )
    assert layers["self_attention"]["out"].get_value() == PartitionSpec(
        None, "tensor", None, "fsdp"
    )
    assert layers["mlp"]["wi_0"].get_value() == PartitionSpec(None, "fsdp", "tensor")
    assert layers["mlp"]["wo"].get_value() == PartitionSpec(None, "tensor", "fsdp")
    assert layers["mlp_norm"]["scale"].get_value() == PartitionSpec(None, "fsdp")
    relpos = specs["decoder"]["relative_position_bias"]["embedding"].get_value()
    assert relpos == PartitionSpec(None, "tensor")


def test_nothing_is_sharded_at_construction() -> None:
    model = T5(config(), rngs=nnx.Rngs(0))
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert len(leaf.sharding.device_set) == 1


def test_constrain_is_a_noop_without_rules() -> None:
    x = jnp.ones((4, 3))
    assert sharding.constrain(x, ("activation_batch", "activation_embed")) is x


@pytest.mark.parametrize("scan_layers", [False, True])
def test_sharded_jitted_forward_matches_the_unsharded_one(mesh: Mesh, scan_layers: bool) -> None:
    model = T5(config(scan_layers=scan_layers), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    encoder = jnp.asarray(rng.integers(1, 128, (4, 9)), jnp.int32)
    decoder = jnp.asarray(rng.integers(1, 128, (4, 5)), jnp.int32)

    graphdef, state = nnx.split(model)
    expected = jax.jit(lambda s, e, d: nnx.merge(graphdef, s)(e, d))(state, encoder, decoder)

    sharded_state = jax.device_put(state, sharding.tree_shardings(state, mesh, PARAM_RULES))
    batch_sharding = NamedSharding(mesh, PartitionSpec("fsdp"))

    activations = sharding.ActivationSharding(mesh, ACTIVATION_RULES)

    def forward(state, encoder, decoder):
        with sharding.activation_sharding(activations):
            return nnx.merge(graphdef, state)(encoder, decoder)

    logits = jax.jit(
        forward, out_shardings=NamedSharding(mesh, PartitionSpec("fsdp", None, "tensor"))
    )(
        sharded_state,
        jax.device_put(encoder, batch_sharding),
        jax.device_put(decoder, batch_sharding),
    )
    assert logits.sharding.spec == PartitionSpec("fsdp", None, "tensor")
    wi = sharded_state["encoder"]["layers"]
    wi = wi["mlp"]["wi_0"] if scan_layers else wi[0]["mlp"]["wi_0"]
    assert len(wi.get_value().sharding.device_set) == 8
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), atol=1e-5)
