"""Feature conversion and packing: the batch layout of CONTRACTS.md, token for token."""

import numpy as np
import pytest

from sbsd_jax.data.feature_converter import (
    SequenceTooLongError,
    TaskAwareEncDecFeatureConverter,
    assemble_rows,
    first_fit_batch,
    next_fit_rows,
    non_pad_fraction,
)
from sbsd_jax.data.features import BATCH_KEYS, TASK_LABEL, TASK_RATIONALE
from sbsd_jax.data.tensorflow_runtime import import_tensorflow

tf = import_tensorflow()


def random_sequences(count: int, seed: int, max_in: int, max_tgt: int):
    """Token sequences ending in EOS (1), no pad (0) inside, like the tasks produce."""
    rng = np.random.default_rng(seed)
    inputs, targets, task_ids = [], [], []
    for _ in range(count):
        n_in = int(rng.integers(1, max_in))
        n_tgt = int(rng.integers(1, max_tgt))
        inputs.append(np.append(rng.integers(3, 50, n_in - 1), 1).astype(np.int32))
        targets.append(np.append(rng.integers(3, 50, n_tgt - 1), 1).astype(np.int32))
        task_ids.append(int(rng.integers(0, 2)))
    return inputs, targets, task_ids


def test_two_sequences_pack_into_one_row_exactly_as_the_contract_says():
    inputs = [np.array([7, 8, 5, 1]), np.array([8, 4, 9, 3, 1])]
    targets = [np.array([3, 9, 1]), np.array([4, 1])]
    rows = next_fit_rows([4, 5], [3, 2], max_input_length=10, max_target_length=7)
    assert rows == [[0, 1]]
    batch = assemble_rows(
        rows,
        inputs,
        targets,
        [TASK_LABEL, TASK_RATIONALE],
        max_input_length=10,
        max_target_length=7,
    )
    expected = {
        "encoder_input_tokens": [7, 8, 5, 1, 8, 4, 9, 3, 1, 0],
        "encoder_segment_ids": [1, 1, 1, 1, 2, 2, 2, 2, 2, 0],
        "encoder_positions": [0, 1, 2, 3, 0, 1, 2, 3, 4, 0],
        "decoder_target_tokens": [3, 9, 1, 4, 1, 0, 0],
        "decoder_input_tokens": [0, 3, 9, 0, 4, 0, 0],
        "decoder_segment_ids": [1, 1, 1, 2, 2, 0, 0],
        "decoder_positions": [0, 1, 2, 0, 1, 0, 0],
        "decoder_loss_weights": [1, 1, 1, 1, 1, 0, 0],
        "decoder_task_ids": [0, 0, 0, 1, 1, 0, 0],
    }
    assert set(batch) == set(BATCH_KEYS)
    for key, values in expected.items():
        np.testing.assert_array_equal(batch[key][0], values, err_msg=key)
    assert batch["decoder_loss_weights"].dtype == np.float32
    assert all(batch[k].dtype == np.int32 for k in BATCH_KEYS if k != "decoder_loss_weights")


def test_next_fit_starts_a_new_row_when_inputs_or_targets_would_overflow():
    rows = next_fit_rows([4, 4, 3, 1, 5], [1, 1, 6, 1, 1], max_input_length=8, max_target_length=6)
    # 2 overflows row 0's inputs (8 + 3); 3 overflows row 1's targets (6 + 1); 4 joins 3.
    assert rows == [[0, 1], [2], [3, 4]]


def test_first_fit_puts_a_sequence_into_the_first_row_with_room():
    # Examples of (input, target) lengths; rows hold 8 / 6. Next-fit would leave row 0's gap.
    examples = [[(6, 2)], [(5, 1)], [(2, 3)], [(3, 5)]]
    rows, taken = first_fit_batch(examples, num_rows=3, max_input_length=8, max_target_length=6)
    assert taken == 4
    assert rows == [[(0, 0), (2, 0)], [(1, 0), (3, 0)]]


def test_first_fit_searches_only_the_newest_rows_of_its_window():
    examples = [[(6, 1)], [(5, 1)], [(4, 1)], [(2, 1)]]
    lengths = {"num_rows": 4, "max_input_length": 8, "max_target_length": 4}
    everywhere, _ = first_fit_batch(examples, **lengths)
    assert everywhere == [[(0, 0), (3, 0)], [(1, 0)], [(2, 0)]]
    newest_two, _ = first_fit_batch(examples, window=2, **lengths)
    assert newest_two == [[(0, 0)], [(1, 0), (3, 0)], [(2, 0)]]


def test_first_fit_takes_an_example_whole_or_not_at_all():
    # The third example's first sequence would fit in row 0, its second needs a third row: the
    # batch closes before the example, leaving none of it behind.
    examples = iter([[(4, 1), (5, 1)], [(3, 1)], [(1, 1), (8, 1)], [(1, 1)]])
    rows, taken = first_fit_batch(examples, num_rows=2, max_input_length=8, max_target_length=4)
    assert taken == 2
    assert rows == [[(0, 0), (1, 0)], [(0, 1)]]
    assert next(examples) == [(1, 1)]  # read lazily: one example past the last one taken


def test_first_fit_on_a_stream_that_ends_returns_what_it_took():
    rows, taken = first_fit_batch([[(3, 2)]], num_rows=4, max_input_length=8, max_target_length=4)
    assert (rows, taken) == ([[(0, 0)]], 1)
    assert first_fit_batch([], num_rows=4, max_input_length=8, max_target_length=4) == ([], 0)


def test_first_fit_names_a_sequence_longer_than_a_row():
    with pytest.raises(SequenceTooLongError, match="sequence 1 of example 0 has 9 input"):
        first_fit_batch([[(2, 1), (9, 1)]], num_rows=4, max_input_length=8, max_target_length=4)
    with pytest.raises(ValueError, match="example 0 does not fit in a batch of 1 rows"):
        first_fit_batch([[(5, 1), (5, 1)]], num_rows=1, max_input_length=8, max_target_length=4)


def test_a_sequence_longer_than_a_row_is_an_error():
    with pytest.raises(SequenceTooLongError, match="sequence 1"):
        next_fit_rows([2, 9], [1, 1], max_input_length=8, max_target_length=4)


def test_packing_loses_and_duplicates_no_token_and_task_ids_follow_targets():
    inputs, targets, task_ids = random_sequences(60, seed=3, max_in=12, max_tgt=9)
    rows = next_fit_rows(
        [len(s) for s in inputs],
        [len(s) for s in targets],
        max_input_length=24,
        max_target_length=16,
    )
    batch = assemble_rows(
        rows, inputs, targets, task_ids, max_input_length=24, max_target_length=16
    )
    assert sorted(i for row in rows for i in row) == list(range(60))  # each sequence once
    for r, row in enumerate(rows):
        for segment, index in enumerate(row, start=1):
            enc = batch["encoder_segment_ids"][r] == segment
            dec = batch["decoder_segment_ids"][r] == segment
            np.testing.assert_array_equal(batch["encoder_input_tokens"][r][enc], inputs[index])
            np.testing.assert_array_equal(batch["decoder_target_tokens"][r][dec], targets[index])
            np.testing.assert_array_equal(batch["encoder_positions"][r][enc], np.arange(enc.sum()))
            np.testing.assert_array_equal(batch["decoder_positions"][r][dec], np.arange(dec.sum()))
            np.testing.assert_array_equal(batch["decoder_task_ids"][r][dec], task_ids[index])
            np.testing.assert_array_equal(
                batch["decoder_input_tokens"][r][dec], np.append(0, targets[index][:-1])
            )
    # Nothing else in the batch: pad everywhere outside segments, weights exactly on targets.
    total_in = sum(len(s) for s in inputs)
    total_tgt = sum(len(s) for s in targets)
    assert (batch["encoder_input_tokens"] != 0).sum() == total_in
    assert (batch["decoder_target_tokens"] != 0).sum() == total_tgt
    np.testing.assert_array_equal(
        batch["decoder_loss_weights"], (batch["decoder_target_tokens"] != 0).astype(np.float32)
    )
    pad = batch["decoder_segment_ids"] == 0
    assert not batch["decoder_task_ids"][pad].any()
    assert not batch["decoder_input_tokens"][pad].any()
    fractions = non_pad_fraction(batch)
    assert fractions["encoder"] == total_in / batch["encoder_input_tokens"].size


def test_empty_rows_are_all_pad_with_zero_loss_weight():
    batch = assemble_rows(
        [[0], []],
        [np.array([5, 1])],
        [np.array([6, 1])],
        [TASK_LABEL],
        max_input_length=4,
        max_target_length=3,
        num_rows=3,
    )
    assert batch["encoder_input_tokens"].shape == (3, 4)
    assert not batch["decoder_loss_weights"][1:].any()
    assert not batch["encoder_segment_ids"][1:].any()
    np.testing.assert_array_equal(batch["decoder_segment_ids"][0], [1, 1, 0])


def _as_tf_dataset(inputs, targets, task_ids):
    def gen():
        for i, t, k in zip(inputs, targets, task_ids, strict=True):
            yield {"inputs": i, "targets": t, "task_id": np.int32(k)}

    return tf.data.Dataset.from_generator(
        gen,
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
            "task_id": tf.TensorSpec([], tf.int32),
        },
    )


@pytest.mark.parametrize("pack", [False, True])
def test_seqio_feature_converter_and_numpy_packer_give_the_same_rows(pack):
    lengths = {"inputs": 24, "targets": 16}
    inputs, targets, task_ids = random_sequences(12, seed=5, max_in=12, max_tgt=9)
    converter = TaskAwareEncDecFeatureConverter(pack=pack)
    converted = list(
        converter(_as_tf_dataset(inputs, targets, task_ids), lengths).as_numpy_iterator()
    )
    if pack:
        rows = next_fit_rows(
            [len(s) for s in inputs],
            [len(s) for s in targets],
            max_input_length=24,
            max_target_length=16,
        )
    else:
        rows = [[i] for i in range(len(inputs))]
    expected = assemble_rows(
        rows, inputs, targets, task_ids, max_input_length=24, max_target_length=16
    )
    assert len(converted) == len(rows)
    for key in BATCH_KEYS:
        got = np.stack([row[key] for row in converted])
        assert got.dtype == expected[key].dtype, key
        np.testing.assert_array_equal(got, expected[key], err_msg=key)


def test_seqio_converter_treats_examples_without_task_id_as_label_task():
    ds = tf.data.Dataset.from_tensors({"inputs": [4, 1], "targets": [5, 6, 1]})
    (row,) = TaskAwareEncDecFeatureConverter()(ds, {"inputs": 3, "targets": 4}).as_numpy_iterator()
    np.testing.assert_array_equal(row["decoder_task_ids"], [0, 0, 0, 0])
    np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 1, 0])
    np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 5, 6, 0])
