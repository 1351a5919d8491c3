"""Tokenised (inputs, targets, task_id) sequences -> the encoder-decoder batch of CONTRACTS.md.

Two implementations of one layout, tested to agree:

- numpy (`first_fit_batch` or `next_fit_rows`, then `assemble_rows`): the training pipeline
  uses `first_fit_batch`, a pure function of which examples go in a batch, so an iterator
  position can be restored without replaying anything.
- `TaskAwareEncDecFeatureConverter`: a `seqio.FeatureConverter` for users' own SeqIO/T5X
  pipelines (`seqio.get_dataset(..., feature_converter=...)`), packing next-fit in order as
  seqio's `trim_and_pack_dataset` does (`next_fit_rows` is the same algorithm in numpy).

Next-fit: a sequence joins the current row if both its inputs and its targets still fit,
otherwise a new row starts. First-fit: a sequence joins the first row with room for both (among
the newest 16), so short sequences fill the gaps earlier long ones left (on CQA's
predict/explain pairs, ~5% more examples per batch).

Each packed sequence gets its own segment id (1, 2, ...) and positions from 0;
`decoder_input_tokens` are the targets shifted right within each segment with 0 (decoder
start) at every segment start; `decoder_task_ids` repeat the sequence's task id on each of its
target tokens (0 on pad) so the loss can be averaged per task.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from sbsd_jax.data.features import BATCH_KEYS, DECODER_START_ID, FLOAT_BATCH_KEYS, TASK_LABEL
from sbsd_jax.data.tensorflow_runtime import import_tensorflow

tf = import_tensorflow()

import seqio  # noqa: E402  (after TensorFlow is imported with accelerators hidden)


class SequenceTooLongError(ValueError):
    """A sequence longer than the row it must fit in (tasks trim, so this is a caller bug)."""


def next_fit_rows(
    input_lengths: Sequence[int],
    target_lengths: Sequence[int],
    *,
    max_input_length: int,
    max_target_length: int,
) -> list[list[int]]:
    """Packing layout: row -> indices of the sequences in it, next-fit in order."""
    rows: list[list[int]] = []
    used_in = used_tgt = 0
    for index, (n_in, n_tgt) in enumerate(zip(input_lengths, target_lengths, strict=True)):
        if n_in > max_input_length or n_tgt > max_target_length:
            raise SequenceTooLongError(
                f"sequence {index} has {n_in} input / {n_tgt} target tokens, rows hold "
                f"{max_input_length} / {max_target_length}"
            )
        if rows and used_in + n_in <= max_input_length and used_tgt + n_tgt <= max_target_length:
            rows[-1].append(index)
            used_in += n_in
            used_tgt += n_tgt
        else:
            rows.append([index])
            used_in, used_tgt = n_in, n_tgt
    return rows


FIRST_FIT_WINDOW = 16  # rows first-fit searches: the newest ones


def first_fit_batch(
    examples: Iterable[Sequence[tuple[int, int]]],
    *,
    num_rows: int,
    max_input_length: int,
    max_target_length: int,
    window: int = FIRST_FIT_WINDOW,
) -> tuple[list[list[tuple[int, int]]], int]:
    """One batch packed first-fit from consecutive examples: (rows, examples taken).

    `examples` gives each example's sequences as (input length, target length); it is read
    lazily, one example past the last one taken. rows[r] lists the (example offset, sequence
    index) of the sequences in row r. A sequence goes into the first row with room among the
    `window` newest rows, else opens a row. An example goes into the batch whole or not at all
    (predict and explain stay together), and the batch closes at the first example that does
    not fit in `num_rows` rows (or when `examples` ends).

    Why a window: every process lays out the whole global batch, so the search must stay cheap
    at pod batch sizes (thousands of rows); older rows are nearly full, and on CQA searching 8+
    rows packs as many examples as searching all of them.
    """
    rows: list[list[tuple[int, int]]] = []
    used_in: list[int] = []  # tokens per open row, including the current example's
    used_tgt: list[int] = []
    taken = 0
    for offset, lengths in enumerate(examples):
        placed: list[int] = []  # row of each of this example's sequences
        for index, (n_in, n_tgt) in enumerate(lengths):
            if n_in > max_input_length or n_tgt > max_target_length:
                raise SequenceTooLongError(
                    f"sequence {index} of example {offset} has {n_in} input / {n_tgt} target "
                    f"tokens, rows hold {max_input_length} / {max_target_length}"
                )
            for row in range(max(0, len(used_in) - window), len(used_in)):
                if used_in[row] + n_in <= max_input_length and (
                    used_tgt[row] + n_tgt <= max_target_length
                ):
                    break
            else:
                if len(used_in) == num_rows:
                    break
                row = len(used_in)
                used_in.append(0)
                used_tgt.append(0)
            used_in[row] += n_in
            used_tgt[row] += n_tgt
            placed.append(row)
        if len(placed) < len(lengths):
            if taken == 0:
                raise ValueError(f"example {offset} does not fit in a batch of {num_rows} rows")
            break  # the batch is full; rows hold only whole examples (counts die with the call)
        for index, row in enumerate(placed):
            if row == len(rows):
                rows.append([])
            rows[row].append((offset, index))
        taken += 1
    return rows, taken


def empty_batch(num_rows: int, max_input_length: int, max_target_length: int) -> dict:
    """All-pad batch with the contract's keys, shapes and dtypes."""
    batch = {}
    for key in BATCH_KEYS:
        length = max_input_length if key.startswith("encoder_") else max_target_length
        dtype = np.float32 if key in FLOAT_BATCH_KEYS else np.int32
        batch[key] = np.zeros((num_rows, length), dtype=dtype)
    return batch


def assemble_rows(
    rows: Sequence[Sequence[int]],
    inputs: Sequence[np.ndarray],
    targets: Sequence[np.ndarray],
    task_ids: Sequence[int],
    *,
    max_input_length: int,
    max_target_length: int,
    num_rows: int | None = None,
) -> dict[str, np.ndarray]:
    """Write the given sequences into rows (a row may be empty: all pad, zero loss weight).

    rows[r] lists the indices (into inputs/targets/task_ids) of the sequences of row r; one
    index per row is the unpacked layout. num_rows pads the batch with empty rows.
    """
    num_rows = len(rows) if num_rows is None else num_rows
    if len(rows) > num_rows:
        raise ValueError(f"{len(rows)} rows do not fit in a batch of {num_rows}")
    batch = empty_batch(num_rows, max_input_length, max_target_length)
    for r, row in enumerate(rows):
        at_in = at_tgt = 0
        for segment, index in enumerate(row, start=1):
            tokens_in = np.asarray(inputs[index], dtype=np.int32)
            tokens_tgt = np.asarray(targets[index], dtype=np.int32)
            n_in, n_tgt = len(tokens_in), len(tokens_tgt)
            if at_in + n_in > max_input_length or at_tgt + n_tgt > max_target_length:
                raise SequenceTooLongError(f"row {r} overflows at sequence {index}")
            span_in = slice(at_in, at_in + n_in)
            span_tgt = slice(at_tgt, at_tgt + n_tgt)
            batch["encoder_input_tokens"][r, span_in] = tokens_in
            batch["encoder_segment_ids"][r, span_in] = segment
            batch["encoder_positions"][r, span_in] = np.arange(n_in)
            batch["decoder_target_tokens"][r, span_tgt] = tokens_tgt
            if n_tgt:
                batch["decoder_input_tokens"][r, at_tgt] = DECODER_START_ID
                batch["decoder_input_tokens"][r, at_tgt + 1 : at_tgt + n_tgt] = tokens_tgt[:-1]
            batch["decoder_segment_ids"][r, span_tgt] = segment
            batch["decoder_positions"][r, span_tgt] = np.arange(n_tgt)
            batch["decoder_loss_weights"][r, span_tgt] = 1.0
            batch["decoder_task_ids"][r, span_tgt] = task_ids[index]
            at_in += n_in
            at_tgt += n_tgt
    return batch


def non_pad_fraction(batch: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Share of real tokens in the encoder and decoder rows (packing efficiency)."""
    return {
        "encoder": float(np.mean(batch["encoder_segment_ids"] > 0)),
        "decoder": float(np.mean(batch["decoder_segment_ids"] > 0)),
    }


_INT = seqio.FeatureConverter.FeatureSpec(dtype=tf.int32)
_TASK_FEATURE = "targets_task"  # task id + 1 per target token, packed alongside the targets


class TaskAwareEncDecFeatureConverter(seqio.EncDecFeatureConverter):
    """seqio's encoder-decoder converter plus `decoder_task_ids`, float32 loss weights, and
    segment ids / positions in unpacked batches too (1 / 0..n-1 on real tokens, 0 on pad).

    Reads the per-example scalar `task_id` feature when the dataset has one (the sbsd tasks
    do), else every example is TASK_LABEL. With pack=True, uses seqio's packing (next-fit within
    chunks of max(length) examples), matching `next_fit_rows` + `assemble_rows` on such a chunk.
    """

    TASK_FEATURES = {"inputs": _INT, "targets": _INT}
    MODEL_FEATURES = {
        key: seqio.FeatureConverter.FeatureSpec(
            dtype=tf.float32 if key in FLOAT_BATCH_KEYS else tf.int32
        )
        for key in BATCH_KEYS
    }
    PACKING_FEATURE_DTYPES = {
        "encoder_segment_ids": tf.int32,
        "decoder_segment_ids": tf.int32,
        "encoder_positions": tf.int32,
        "decoder_positions": tf.int32,
    }

    def __init__(self, pack: bool = False, **kwargs) -> None:
        super().__init__(pack=pack, **kwargs)

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        def with_task_tokens(features):
            task_id = features.get("task_id", tf.constant(TASK_LABEL, tf.int32))
            targets = features["targets"]
            return {
                "inputs": features["inputs"],
                "targets": targets,
                # +1 because seqio's packer measures a sequence by its non-zero tokens.
                _TASK_FEATURE: tf.fill(tf.shape(targets), tf.cast(task_id, tf.int32) + 1),
            }

        lengths = {
            "inputs": task_feature_lengths["inputs"],
            "targets": task_feature_lengths["targets"],
            _TASK_FEATURE: task_feature_lengths["targets"],
        }
        ds = ds.map(with_task_tokens, num_parallel_calls=tf.data.AUTOTUNE)
        if self.pack:
            ds = seqio.utils.trim_and_pack_dataset(ds, lengths, self._use_custom_packing_ops)
        else:
            ds = seqio.utils.trim_and_pad_dataset(ds, lengths)
        return ds.map(self._to_model_features, num_parallel_calls=tf.data.AUTOTUNE)

    def _to_model_features(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        inputs, targets = features["inputs"], features["targets"]
        if self.pack:
            encoder_segments = features["inputs_segment_ids"]
            decoder_segments = features["targets_segment_ids"]
            encoder_positions = features["inputs_positions"]
            decoder_positions = features["targets_positions"]
        else:
            encoder_segments = tf.cast(tf.not_equal(inputs, 0), tf.int32)
            decoder_segments = tf.cast(tf.not_equal(targets, 0), tf.int32)
            encoder_positions = tf.range(tf.shape(inputs)[0]) * encoder_segments
            decoder_positions = tf.range(tf.shape(targets)[0]) * decoder_segments
        decoder_mask = tf.cast(tf.not_equal(targets, 0), tf.int32)
        return {
            "encoder_input_tokens": inputs,
            "encoder_segment_ids": encoder_segments,
            "encoder_positions": encoder_positions,
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
                targets,
                sequence_id=decoder_segments,  # 0 at each segment start, pad stays 0
                bos_id=self.bos_id,
            ),
            "decoder_target_tokens": targets,
            "decoder_segment_ids": decoder_segments,
            "decoder_positions": decoder_positions,
            "decoder_loss_weights": tf.cast(decoder_mask, tf.float32),
            "decoder_task_ids": tf.maximum(features[_TASK_FEATURE] - 1, 0) * decoder_mask,
        }

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict:
        return {
            key: task_feature_lengths["inputs" if key.startswith("encoder_") else "targets"]
            for key in BATCH_KEYS
        }
