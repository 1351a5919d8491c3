"""Our Flax NNX T5 computes what transformers' PyTorch T5 computes, on the same random weights."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from flax import nnx  # noqa: E402

from sbsd_jax.model import t5 as t5_module  # noqa: E402
from sbsd_jax.model.decode import greedy_decode  # noqa: E402
from sbsd_jax.model.hf_checkpoint import load_hf_t5_model  # noqa: E402

VOCAB = 100


def make_hf_checkpoint(
    directory: Path,
    *,
    version: str,
    seed: int = 0,
    vocab_size: int = VOCAB,
    eos_boost: float = 0.0,
    num_decoder_layers: int = 3,
) -> transformers.T5ForConditionalGeneration:
    """A tiny random HF T5 (v1.0: ReLU + tied; v1.1: gated-GELU + own lm_head) saved to disk.

    Few buckets and a short max distance so the logarithmic buckets are exercised.
    """
    torch.manual_seed(seed)
    gated = version == "v1_1"
    config = transformers.T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=num_decoder_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not gated,
        decoder_start_token_id=0,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    if gated:  # published v1.1 checkpoints have their own LM head
        model.lm_head = torch.nn.Linear(config.d_model, vocab_size, bias=False)
    if eos_boost:
        head = model.lm_head if gated else model.shared
        with torch.no_grad():
            head.weight[1] += eos_boost * head.weight[2:].std()
    model.save_pretrained(directory)
    return model


def padded_batch(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    encoder = rng.integers(2, VOCAB, (3, 30))
    encoder[1, 20:] = 0
    encoder[2, 5:] = 0
    decoder = rng.integers(2, VOCAB, (3, 25))
    decoder[:, 0] = 0
    return encoder, decoder


@pytest.fixture(scope="module", params=["v1_0", "v1_1"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp(f"hf_{request.param}")
    hf_model = make_hf_checkpoint(directory, version=request.param)
    ours, _ = load_hf_t5_model(directory)
    return hf_model, ours


@nnx.jit
def forward(model, encoder, decoder):
    return model(encoder, decoder)


def hf_forward(hf_model, encoder: np.ndarray, decoder: np.ndarray, labels=None):
    with torch.no_grad():
        return hf_model(
            input_ids=torch.tensor(encoder),
            attention_mask=torch.tensor((encoder != 0).astype(np.int64)),
            decoder_input_ids=torch.tensor(decoder),
            labels=None if labels is None else torch.tensor(labels),
        )


def test_logits_match_hf_with_padding(pair) -> None:
    hf_model, ours = pair
    encoder, decoder = padded_batch()
    expected = hf_forward(hf_model, encoder, decoder).logits.numpy()
    logits = forward(ours, jnp.asarray(encoder), jnp.asarray(decoder))
    assert logits.dtype == jnp.float32
    assert np.abs(np.asarray(logits) - expected).max() < 1e-4


def test_encoder_output_matches_hf_on_real_tokens(pair) -> None:
    hf_model, ours = pair
    encoder, decoder = padded_batch()
    expected = hf_forward(hf_model, encoder, decoder).encoder_last_hidden_state.numpy()
    encoded = np.asarray(nnx.jit(lambda m, e: m.encode(e))(ours, jnp.asarray(encoder)))
    real = (encoder != 0)[..., None]
    assert np.abs(np.where(real, encoded - expected, 0.0)).max() < 1e-4


def test_segment_ids_of_an_unpacked_batch_give_the_same_logits(pair) -> None:
    _, ours = pair
    encoder, decoder = padded_batch()
    segments = (encoder != 0).astype(np.int32)
    positions = np.broadcast_to(np.arange(encoder.shape[1]), encoder.shape)
    with_segments = nnx.jit(lambda m, *a, **k: m(*a, **k))(
        ours,
        jnp.asarray(encoder),
        jnp.asarray(decoder),
        encoder_segment_ids=jnp.asarray(segments),
        encoder_positions=jnp.asarray(positions),
        decoder_segment_ids=jnp.ones(decoder.shape, jnp.int32),
        decoder_positions=jnp.asarray(np.broadcast_to(np.arange(decoder.shape[1]), decoder.shape)),
    )
    plain = forward(ours, jnp.asarray(encoder), jnp.asarray(decoder))
    np.testing.assert_allclose(np.asarray(with_segments), np.asarray(plain), atol=1e-5)


def test_token_cross_entropy_matches_hf_loss_with_ignored_labels(pair) -> None:
    hf_model, ours = pair
    encoder, _ = padded_batch()
    rng = np.random.default_rng(1)
    labels = rng.integers(2, VOCAB, (3, 12))
    labels[0, 9:] = -100
    labels[2, 4:] = -100
    decoder = np.where(labels == -100, 0, labels)
    decoder = np.concatenate([np.zeros((3, 1), np.int64), decoder[:, :-1]], axis=1)  # shift right
    expected = float(hf_forward(hf_model, encoder, decoder, labels=labels).loss)

    logits = forward(ours, jnp.asarray(encoder), jnp.asarray(decoder))
    weights = jnp.asarray(labels != -100, jnp.float32)
    per_token = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.asarray(np.maximum(labels, 0))
    )
    loss = float(jnp.sum(per_token * weights) / jnp.sum(weights))
    assert abs(loss - expected) < 1e-5


def test_relative_position_buckets_equal_hf_for_every_distance() -> None:
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-400, 401)[None, :]
    for bidirectional in (True, False):
        for num_buckets, max_distance in ((32, 128), (8, 20), (64, 256)):
            expected = T5Attention._relative_position_bucket(
                torch.tensor(relative),
                bidirectional=bidirectional,
                num_buckets=num_buckets,
                max_distance=max_distance,
            ).numpy()
            ours = t5_module.relative_position_bucket(
                jnp.asarray(relative, jnp.int32),
                bidirectional=bidirectional,
                num_buckets=num_buckets,
                max_distance=max_distance,
            )
            np.testing.assert_array_equal(np.asarray(ours), expected)


@pytest.mark.parametrize(
    "rows", [[0, 1, 2, 3, 4, 5], [0, 2, 3, 5]], ids=["some_never_stop", "all_stop_early"]
)
def test_greedy_decode_equals_hf_generate_token_for_token(tmp_path: Path, rows: list[int]) -> None:
    # (transformers' generate cache needs num_decoder_layers == num_layers)
    hf_model = make_hf_checkpoint(
        tmp_path, version="v1_1", seed=1, vocab_size=24, eos_boost=1.0, num_decoder_layers=2
    )
    ours, _ = load_hf_t5_model(tmp_path)
    rng = np.random.default_rng(2)
    encoder = rng.integers(2, 24, (6, 12))
    encoder[1, 7:] = 0
    encoder[3, 3:] = 0
    encoder = encoder[rows]
    max_new = 16
    with torch.no_grad():
        expected = hf_model.generate(
            input_ids=torch.tensor(encoder),
            attention_mask=torch.tensor((encoder != 0).astype(np.int64)),
            do_sample=False,
            max_new_tokens=max_new,
        ).numpy()[:, 1:]  # drop the start token
    expected = np.pad(expected, ((0, 0), (0, max_new - expected.shape[1])))
    # The fixture must exercise rows that stop at different steps.
    eos_steps = {int(np.argmax(row == 1)) for row in expected if (row == 1).any()}
    assert len(eos_steps) >= 2

    tokens = greedy_decode(ours, jnp.asarray(encoder), max_decode_length=max_new)
    assert tokens.dtype == jnp.int32 and tokens.shape == (len(rows), max_new)
    np.testing.assert_array_equal(np.asarray(tokens), expected)


def test_greedy_decode_runs_inside_jit_on_graphdef_and_state(tmp_path: Path) -> None:
    make_hf_checkpoint(tmp_path, version="v1_0")
    ours, _ = load_hf_t5_model(tmp_path)
    encoder, decoder = padded_batch()
    graphdef, state = nnx.split(ours)

    @jax.jit
    def decode_in_step(state, tokens):
        return greedy_decode(graphdef, tokens, state=state, max_decode_length=7)

    tokens = np.asarray(decode_in_step(state, jnp.asarray(encoder)))
    # Greedy tokens are the argmax of teacher-forced logits on their own (shifted) prefix.
    inputs = np.concatenate([np.zeros((3, 1), np.int32), tokens[:, :-1]], axis=1)
    logits = np.asarray(forward(ours, jnp.asarray(encoder), jnp.asarray(inputs)))
    argmax = logits.argmax(-1)
    for row in range(3):
        stop = int(np.argmax(tokens[row] == 1)) + 1 if (tokens[row] == 1).any() else 7
        np.testing.assert_array_equal(tokens[row, :stop], argmax[row, :stop])
        assert not tokens[row, stop:].any()


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cached_decode_steps_reproduce_teacher_forced_logits(
    tmp_path: Path, scan_layers: bool
) -> None:
    make_hf_checkpoint(tmp_path, version="v1_1")
    ours, _ = load_hf_t5_model(tmp_path, scan_layers=scan_layers)
    encoder, decoder = padded_batch()
    decoder = jnp.asarray(decoder[:, :6])
    encoder = jnp.asarray(encoder)
    teacher_forced = forward(ours, encoder, decoder)

    @nnx.jit
    def run_cached(model, encoder, decoder):
        cache = model.init_decode_cache(model.encode(encoder), encoder, max_decode_length=8)

        def step(cache, tokens):
            logits, cache = model.decode_step(tokens, cache)
            return cache, logits

        _, step_logits = jax.lax.scan(step, cache, decoder.T)
        return jnp.swapaxes(step_logits, 0, 1)

    np.testing.assert_allclose(
        np.asarray(run_cached(ours, encoder, decoder)), np.asarray(teacher_forced), atol=1e-5
    )
