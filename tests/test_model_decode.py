"""The one-token decoder path of sbsd_jax.model.decode: its argmax and its scanned-layer form.
(Token-for-token equality with transformers' generate is in test_model_parity.py.)"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sbsd_jax.model.config import get_model_config
from sbsd_jax.model.decode import first_argmax, greedy_decode
from sbsd_jax.model.hf_checkpoint import load_hf_t5_model, save_hf_t5
from sbsd_jax.model.t5 import T5


def test_first_argmax_is_jnp_argmax_including_ties():
    rng = np.random.default_rng(0)
    logits = rng.integers(0, 4, (16, 33)).astype(np.float32)  # many ties
    logits[3] = 7.0  # all equal: the first index
    np.testing.assert_array_equal(np.asarray(first_argmax(jnp.asarray(logits))), logits.argmax(-1))
    assert first_argmax(jnp.asarray(logits)).dtype == jnp.int32


def test_scanned_layers_decode_the_same_tokens_as_unrolled_layers(tmp_path):
    config = get_model_config("t5_v1_1_tiny", vocab_size=64, num_decoder_layers=3)
    save_hf_t5(T5(config, rngs=nnx.Rngs(3)), config, tmp_path)
    unrolled, _ = load_hf_t5_model(tmp_path)
    scanned, _ = load_hf_t5_model(tmp_path, scan_layers=True)
    tokens = np.random.default_rng(1).integers(2, 64, (3, 10))
    tokens[1, 4:] = 0
    expected = np.asarray(greedy_decode(unrolled, tokens, max_decode_length=9, eos_id=-1))
    got = np.asarray(greedy_decode(scanned, tokens, max_decode_length=9, eos_id=-1))
    np.testing.assert_array_equal(got, expected)
    assert len({tuple(row) for row in expected}) > 1  # rows differ: the test can fail
