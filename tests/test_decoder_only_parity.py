"""Our decoder-only models compute what transformers' PyTorch models compute, per architecture:
logits on padded batches, greedy decoding with EOS, and packed rows."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from decoder_only_hf import ARCHITECTURES, PAD, VOCAB, save_hf_model
from flax import nnx

from sbsd_jax.model.decoder_only.decode import greedy_decode
from sbsd_jax.model.decoder_only.hf_checkpoint import load_hf_decoder_model

torch = pytest.importorskip("torch")

LENGTH = 17  # longer than every sliding window and than the rope scalings' original length
PACKED = (7, 5, 3)  # sequences packed into one row (7 > the sliding windows of 4 and 5)
PROMPT, NEW_TOKENS = 10, 8


def _batch() -> tuple[np.ndarray, np.ndarray]:
    """Rows 0-2: full length, left-padded (3 pads), right-padded (4 pads). Row 3: the PACKED
    sequences in one row (segments 1, 2, 3, then 2 pads). Rows 4-6: each of them alone."""
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, VOCAB, (7, LENGTH))
    segments = np.ones_like(tokens)
    segments[1, :3] = 0
    segments[2, -4:] = 0
    segments[3] = 0
    start = 0
    for number, length in enumerate(PACKED, start=1):
        segments[3, start : start + length] = number
        tokens[3 + number, :length] = tokens[3, start : start + length]
        segments[3 + number] = np.arange(LENGTH) < length
        start += length
    return np.where(segments != 0, tokens, PAD), segments


@nnx.jit
def _forward(model, tokens, segments):
    return model(tokens, segment_ids=segments)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def models(request, tmp_path_factory):
    """(architecture, transformers model, our model loaded from its save_pretrained folder,
    our logits for _batch())."""
    directory = tmp_path_factory.mktemp(request.param)
    hf = save_hf_model(request.param, directory)
    ours = load_hf_decoder_model(directory)
    tokens, segments = _batch()
    logits = np.asarray(_forward(ours, jnp.asarray(tokens), jnp.asarray(segments)))
    return request.param, hf, ours, logits


def _hf_logits(hf, tokens: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """What generate() feeds the model: the padding mask and positions counted from it."""
    positions = np.clip(np.cumsum(segments, axis=1) - 1, 0, None)
    with torch.no_grad():
        return hf(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(segments),
            position_ids=torch.tensor(positions),
        ).logits.numpy()


def test_logits_match_transformers_on_left_and_right_padded_rows(models):
    arch, hf, _, logits = models
    tokens, segments = _batch()
    rows = [0, 1, 2, 4, 5, 6]  # the packed row 3 has no transformers equivalent
    expected = _hf_logits(hf, tokens[rows], segments[rows])
    real = segments[rows] == 1
    assert np.abs(expected).max() > 0.5, "weights too small for a meaningful comparison"
    np.testing.assert_allclose(logits[rows][real], expected[real], atol=1e-4, rtol=0, err_msg=arch)


def test_packed_row_equals_each_sequence_alone(models):
    """Segment ids confine attention (and sliding windows) to each sequence and restart the
    rotary positions, so a packed row's logits are those of its sequences run alone."""
    arch, _, _, logits = models
    start = 0
    for number, length in enumerate(PACKED, start=1):
        np.testing.assert_allclose(
            logits[3, start : start + length],
            logits[3 + number, :length],
            atol=1e-5,
            rtol=0,
            err_msg=f"{arch}: sequence {number}",
        )
        start += length


def _prompts() -> tuple[np.ndarray, np.ndarray]:
    tokens, segments = _batch()
    return tokens[:3, :PROMPT], segments[:3, :PROMPT]  # full, 3 pads left, 1 pad right


def _left_aligned(tokens: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(segments, axis=1, kind="stable")
    return np.take_along_axis(tokens, order, 1), np.take_along_axis(segments, order, 1)


def _hf_generate(hf, tokens: np.ndarray, segments: np.ndarray, eos: int | None) -> np.ndarray:
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(tokens),
            attention_mask=torch.tensor(segments),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            eos_token_id=eos,
            pad_token_id=PAD,
        )
    return out.numpy()[:, tokens.shape[1] :]


def test_greedy_decode_matches_generate_and_stops_at_eos(models):
    """Prompts padded on either side decode as transformers decodes them left-padded; each
    row stops at its first EOS and is padded after it."""
    arch, hf, ours, _ = models
    tokens, segments = _prompts()
    left_tokens, left_segments = _left_aligned(tokens, segments)
    free_run = _hf_generate(hf, left_tokens, left_segments, None)
    eos = int(free_run[1, 2])  # row 1 emits it by its third token
    expected = _hf_generate(hf, left_tokens, left_segments, eos)
    got = np.asarray(
        greedy_decode(
            ours,
            jnp.asarray(tokens),
            prompt_segment_ids=jnp.asarray(segments),
            max_decode_length=NEW_TOKENS,
            eos_ids=(eos,),
            pad_id=PAD,
        )
    )
    width = expected.shape[1]  # generate stops early once every row has finished
    np.testing.assert_array_equal(got[:, :width], expected, err_msg=arch)
    assert (got[:, width:] == PAD).all()
    stop = list(got[1]).index(eos)
    assert stop <= 2 and (got[1, stop + 1 :] == PAD).all()
