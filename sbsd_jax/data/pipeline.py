"""Host-local, deterministic, resumable training batches.

At start-up the training split goes once through the SeqIO tasks (prefixes, targets, tokenise,
trim + EOS) into numpy arrays. After that every batch is a pure numpy function of
(seed, stream position): the example stream is epoch after epoch of the training examples,
each epoch a permutation drawn from (seed, epoch), so the iterator state is just
(epoch, position) and restoring it costs nothing.

Global batch: `batch_size` examples x tasks per example rows (2 for step_by_step: row 2i is
example i's predict sequence, row 2i+1 its explain sequence, so both tasks of an example are in
the same batch, as in the reference; an example without a rationale gets an all-pad explain
row). With packing the row count stays the same and rows are filled first-fit
(`first_fit_batch`) with the sequences of consecutive stream examples (predict and explain of
an example always in the same batch); a batch takes as many examples as fit. The last batch of
an epoch continues into the next epoch's permutation, so every batch has the same shape.

Host sharding: each process materialises its rows of the global batch, `host_rows`
(ascending; on a TPU pod not necessarily adjacent). With a mesh,
make_train_iterator(batch_sharding=...) takes them from where the sharding puts the rows
(partitioning.process_batch_rows): processes whose devices hold the same batch shards, as when
the 'tensor' axis spans processes, load the same rows. Without one,
process p of P gets [p * rows / P, (p + 1) * rows / P) (right when the batch is split over
every process). Every process tokenises the whole training split and derives the same global
layout from token lengths alone, then materialises only its own rows. The stream does not
depend on the process layout, so a state saved on P processes can be restored on P' processes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from sbsd_jax.data.examples import DatasetSpec, Example
from sbsd_jax.data.feature_converter import assemble_rows, first_fit_batch
from sbsd_jax.data.features import METHOD_TASKS, TASK_KINDS, check_method
from sbsd_jax.data.report import DataReport
from sbsd_jax.data.sources import LoadedDataset, load_dataset_splits
from sbsd_jax.data.tasks import (
    RegisteredTasks,
    register_tasks,
    registration_suffix,
    tokenized_columns,
)
from sbsd_jax.data.truncation import (
    LengthLimits,
    count_truncations,
    report_truncations,
    vocabulary_name,
)
from sbsd_jax.data.vocabulary import make_vocabulary

if TYPE_CHECKING:
    from jax.sharding import NamedSharding

STATE_FORMAT = "sbsd_jax.train_iterator/1"


class IteratorStateError(ValueError):
    """A saved iterator state that does not belong to this data/configuration."""


# ----------------------------------------------------------------------------------------------
# Tokenised training set


@dataclasses.dataclass(frozen=True)
class RaggedTokens:
    """Variable-length token sequences in one flat array; sequence i is values[offsets[i]:
    offsets[i + 1]] (empty = this example has no sequence for the task)."""

    values: np.ndarray  # int32
    offsets: np.ndarray  # int64, [n + 1]

    @classmethod
    def from_sequences(cls, sequences: Sequence[np.ndarray]) -> RaggedTokens:
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        values = (
            np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences])
            if sequences
            else np.zeros(0, dtype=np.int32)
        )
        return cls(values=values.astype(np.int32), offsets=offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    @functools.cached_property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


@dataclasses.dataclass(frozen=True)
class TokenizedTrainSet:
    """Per task kind (in row order), the tokenised inputs/targets of every training example.

    example_indices: the split positions of the examples in the training stream (those with at
    least one sequence, e.g. cot drops examples without a rationale).
    """

    kinds: tuple[str, ...]
    inputs: tuple[RaggedTokens, ...]
    targets: tuple[RaggedTokens, ...]
    example_indices: np.ndarray

    @property
    def task_ids(self) -> tuple[int, ...]:
        return tuple(TASK_KINDS[kind].task_id for kind in self.kinds)

    @property
    def num_examples(self) -> int:
        return len(self.example_indices)

    def fingerprint(self) -> str:
        """sha256 of every token: differs whenever data, vocabulary, tasks or lengths do."""
        digest = hashlib.sha256(json.dumps(self.kinds).encode())
        for ragged in (*self.inputs, *self.targets):
            digest.update(ragged.values.tobytes())
            digest.update(ragged.offsets.tobytes())
        digest.update(self.example_indices.astype(np.int64).tobytes())
        return digest.hexdigest()


def tokenize_train_set(
    registered: RegisteredTasks,
    kinds: Sequence[str],
    *,
    max_input_length: int,
    max_target_length: int,
    split: str = "train",
) -> TokenizedTrainSet:
    """Run the split through each task once (the tasks define prefixes/targets/truncation)."""
    num_examples = registered.num_examples.get(split)
    if num_examples is None:
        raise ValueError(f"split {split!r} was not registered for {registered.dataset}")
    inputs, targets = [], []
    for kind in kinds:
        kind_inputs: list[np.ndarray] = [np.zeros(0, np.int32)] * num_examples
        kind_targets: list[np.ndarray] = [np.zeros(0, np.int32)] * num_examples
        columns = tokenized_columns(
            registered,
            kind,
            split,
            max_input_length=max_input_length,
            max_target_length=max_target_length,
        )
        for index, tokens_in, tokens_tgt in zip(
            columns["example_index"].tolist(), columns["inputs"], columns["targets"], strict=True
        ):
            kind_inputs[index] = tokens_in
            kind_targets[index] = tokens_tgt
        inputs.append(RaggedTokens.from_sequences(kind_inputs))
        targets.append(RaggedTokens.from_sequences(kind_targets))
    has_sequence = np.zeros(num_examples, dtype=bool)
    for ragged in targets:
        has_sequence |= ragged.lengths > 0
    return TokenizedTrainSet(
        kinds=tuple(kinds),
        inputs=tuple(inputs),
        targets=tuple(targets),
        example_indices=np.flatnonzero(has_sequence).astype(np.int64),
    )


# ----------------------------------------------------------------------------------------------
# The iterator


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of epoch `epoch`: a permutation drawn from (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """Everything besides the tokens that decides which batches come out."""

    batch_size: int  # global, in examples
    max_input_length: int
    max_target_length: int
    pack: bool
    seed: int

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_input_length < 1 or self.max_target_length < 1:
            raise ValueError("max_input_length and max_target_length must be >= 1")


def rows_per_batch(train_set: TokenizedTrainSet, batching: BatchingConfig) -> int:
    """Rows of every global batch: examples x tasks per example (packed batches too)."""
    return batching.batch_size * len(train_set.kinds)


def even_host_rows(num_rows: int, process_index: int, process_count: int) -> slice:
    """Process p of P loads rows [p * R / P, (p + 1) * R / P): the layout when the batch is
    split over every process (no mesh axis outside the batch axes spans processes)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if num_rows % process_count:
        raise ValueError(
            f"global batch of {num_rows} rows does not split over {process_count} processes"
        )
    share = num_rows // process_count
    return slice(process_index * share, (process_index + 1) * share)


class TrainIterator:
    """Infinite iterator of host-local numpy batches (keys: features.BATCH_KEYS).

    Each batch holds the global batch's rows `host_rows`: given (from the mesh, see
    make_train_iterator), or else this process's even share by process_index/process_count.
    get_state()/set_state() save and restore the stream position (JSON-serialisable), so a
    resumed run sees exactly the batches an uninterrupted one would have; the state does not
    depend on host_rows.
    """

    def __init__(
        self,
        train_set: TokenizedTrainSet,
        batching: BatchingConfig,
        *,
        process_index: int = 0,
        process_count: int = 1,
        host_rows: slice | Sequence[int] | np.ndarray | None = None,
    ) -> None:
        if train_set.num_examples == 0:
            raise ValueError("the training split has no usable examples")
        self.train_set = train_set
        self.batching = batching
        self.rows_per_batch = rows_per_batch(train_set, batching)
        if host_rows is None:
            host_rows = even_host_rows(self.rows_per_batch, process_index, process_count)
        if isinstance(host_rows, slice):  # taken literally: no clamping, no negative indices
            stop = self.rows_per_batch if host_rows.stop is None else host_rows.stop
            host_rows = range(host_rows.start or 0, stop, host_rows.step or 1)
        rows = np.asarray(host_rows, dtype=np.int64).reshape(-1)
        if (
            rows.size == 0
            or rows[0] < 0
            or rows[-1] >= self.rows_per_batch
            or np.any(np.diff(rows) <= 0)
        ):
            raise ValueError(
                f"host_rows {rows.tolist()} must be ascending, distinct, non-empty rows of the "
                f"{self.rows_per_batch} rows of a global batch"
            )
        self.host_rows = rows  # this process's rows of every global batch, ascending
        self._config_summary = {
            "tasks": list(train_set.kinds),
            "batch_size": batching.batch_size,
            "max_input_length": batching.max_input_length,
            "max_target_length": batching.max_target_length,
            "pack": batching.pack,
        }
        self._data_fingerprint = train_set.fingerprint()
        self.fingerprint = hashlib.sha256(
            (self._data_fingerprint + json.dumps(self._config_summary, sort_keys=True)).encode()
        ).hexdigest()
        self._stream_position = 0  # examples consumed since epoch 0, position 0
        # Plain lists: the packed layout walks them one sequence at a time.
        self._input_lengths = [ragged.lengths.tolist() for ragged in train_set.inputs]
        self._target_lengths = [ragged.lengths.tolist() for ragged in train_set.targets]
        self._permutations: dict[int, np.ndarray] = {}

    # -- the example stream ---------------------------------------------------------------

    @property
    def examples_per_epoch(self) -> int:
        return self.train_set.num_examples

    def _stream_example(self, stream_position: int) -> int:
        """Split index of the example at an absolute stream position."""
        epoch, position = divmod(stream_position, self.examples_per_epoch)
        if epoch not in self._permutations:
            if len(self._permutations) > 2:
                self._permutations.pop(min(self._permutations))
            self._permutations[epoch] = epoch_permutation(
                self.batching.seed, epoch, self.examples_per_epoch
            )
        return int(self.train_set.example_indices[self._permutations[epoch][position]])

    def _sequences_of(self, example: int) -> list[tuple[int, int]]:
        """(kind index, example) of the example's non-empty sequences, in row order."""
        return [
            (kind, example)
            for kind, lengths in enumerate(self._target_lengths)
            if lengths[example] > 0
        ]

    # -- batch layout (lengths only) ------------------------------------------------------

    def _layout(self, start: int) -> tuple[list[list[tuple[int, int]]], int]:
        """Global rows of the batch starting at stream position `start` and how many examples
        it takes. Each row lists (kind index, example) sequences."""
        if not self.batching.pack:
            rows = []
            for offset in range(self.batching.batch_size):
                example = self._stream_example(start + offset)
                for kind in range(len(self.train_set.kinds)):
                    has_target = self._target_lengths[kind][example] > 0
                    rows.append([(kind, example)] if has_target else [])
            return rows, self.batching.batch_size
        taken_sequences: list[list[tuple[int, int]]] = []  # (kind, example) of each example

        def stream_lengths() -> Iterator[list[tuple[int, int]]]:
            for offset in itertools.count():
                sequences = self._sequences_of(self._stream_example(start + offset))
                taken_sequences.append(sequences)
                yield [
                    (self._input_lengths[kind][example], self._target_lengths[kind][example])
                    for kind, example in sequences
                ]

        layout, taken = first_fit_batch(
            stream_lengths(),
            num_rows=self.rows_per_batch,
            max_input_length=self.batching.max_input_length,
            max_target_length=self.batching.max_target_length,
        )
        rows = [[taken_sequences[offset][index] for offset, index in row] for row in layout]
        return rows, taken

    # -- iteration ------------------------------------------------------------------------

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rows, taken = self._layout(self._stream_position)
        # A packed batch may fill fewer rows than it has: the rest are all padding.
        batch = self._materialise([rows[i] if i < len(rows) else [] for i in self.host_rows])
        self._stream_position += taken
        return batch

    def _materialise(self, host_rows: list[list[tuple[int, int]]]) -> dict[str, np.ndarray]:
        inputs, targets, task_ids, row_indices = [], [], [], []
        task_id_of_kind = self.train_set.task_ids
        for row in host_rows:
            indices = []
            for kind, example in row:
                indices.append(len(inputs))
                inputs.append(self.train_set.inputs[kind][example])
                targets.append(self.train_set.targets[kind][example])
                task_ids.append(task_id_of_kind[kind])
            row_indices.append(indices)
        return assemble_rows(
            row_indices,
            inputs,
            targets,
            task_ids,
            max_input_length=self.batching.max_input_length,
            max_target_length=self.batching.max_target_length,
            num_rows=len(self.host_rows),
        )

    # -- checkpointable position ----------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: restore with set_state on an iterator over the same
        data and batching configuration (any process count)."""
        epoch, position = divmod(self._stream_position, self.examples_per_epoch)
        return {
            "format": STATE_FORMAT,
            "epoch": int(epoch),
            "position": int(position),
            "seed": int(self.batching.seed),
            "fingerprint": self.fingerprint,
            "data_fingerprint": self._data_fingerprint,
            "config": dict(self._config_summary),
        }

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position; IteratorStateError when it belongs to other data or
        another configuration."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise IteratorStateError(
                f"not a train iterator state (expected format {STATE_FORMAT!r}): {state!r:.200}"
            )
        missing = {"epoch", "position", "seed", "fingerprint"} - set(state)
        if missing:
            raise IteratorStateError(f"iterator state lacks field(s) {sorted(missing)}")
        if int(state["seed"]) != self.batching.seed:
            raise IteratorStateError(
                f"iterator state was saved with seed {state['seed']}, this run uses seed "
                f"{self.batching.seed}"
            )
        if state["fingerprint"] != self.fingerprint:
            saved_config = state.get("config") or {}
            differing = sorted(
                key
                for key in set(saved_config) | set(self._config_summary)
                if saved_config.get(key) != self._config_summary.get(key)
            )
            if differing:
                details = ", ".join(
                    f"{key}: saved {saved_config.get(key)!r}, now {self._config_summary.get(key)!r}"
                    for key in differing
                )
                reason = f"the batching configuration differs ({details})"
            else:
                reason = (
                    "the tokenised training data differs (examples, subsampling, vocabulary "
                    "or task definitions changed)"
                )
            raise IteratorStateError(f"iterator state belongs to another run: {reason}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.examples_per_epoch:
            raise IteratorStateError(
                f"iterator state position epoch={epoch} position={position} is outside an "
                f"epoch of {self.examples_per_epoch} examples"
            )
        self._stream_position = epoch * self.examples_per_epoch + position


# ----------------------------------------------------------------------------------------------
# From the trainer config


def _get(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)


def dataset_spec_from_config(config: Any) -> DatasetSpec:
    """The one place the trainer config becomes a DatasetSpec (fields: dataset, data_source,
    data_dir, label_type, train_fraction, subsample_seed, drop_unparseable, ...)."""
    return DatasetSpec.from_config(config)


def load_dataset(config: Any) -> LoadedDataset:
    """Examples of every split plus data A's report (counts, parse failures, teacher accuracy)."""
    return load_dataset_splits(dataset_spec_from_config(config))


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Loaded examples, registered tasks and the tokenised training set of one config."""

    splits: Mapping[str, Sequence[Example]]
    registered: RegisteredTasks
    train_set: TokenizedTrainSet
    method: str
    max_input_length: int
    max_target_length: int
    report: DataReport | None = None  # None when the examples were passed in


def prepare_data(
    config: Any, *, splits: Mapping[str, Sequence[Example]] | None = None
) -> PreparedData:
    """Load (unless `splits` is given), register the tasks, tokenise the training split."""
    method = check_method(_get(config, "method", "step_by_step"))
    report = None
    if splits is None:
        loaded = load_dataset(config)
        splits, report = loaded.splits, loaded.report
    vocabulary_spec = _get(config, "vocabulary", "byte")
    vocabulary = make_vocabulary(vocabulary_spec)
    registered = register_tasks(
        _get(config, "dataset"),
        splits,
        vocabulary,
        name_suffix=registration_suffix(splits, vocabulary),
    )
    max_input_length = int(_get(config, "max_input_length", 1024))
    max_target_length = int(_get(config, "max_target_length", 256))
    if report is not None:
        limits = LengthLimits(max_input_length, max_target_length)
        counts = count_truncations(
            _get(config, "dataset"), method, splits, vocabulary.encode, limits
        )
        report_truncations(report, counts, limits, vocabulary_name(vocabulary_spec))
    train_set = tokenize_train_set(
        registered,
        METHOD_TASKS[method],
        max_input_length=max_input_length,
        max_target_length=max_target_length,
    )
    return PreparedData(
        splits=splits,
        registered=registered,
        train_set=train_set,
        method=method,
        max_input_length=max_input_length,
        max_target_length=max_target_length,
        report=report,
    )


def make_train_iterator(
    config: Any,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    prepared: PreparedData | None = None,
    splits: Mapping[str, Sequence[Example]] | None = None,
    batch_sharding: NamedSharding | None = None,
) -> TrainIterator:
    """The host's share of the global batches for `config`.

    With `batch_sharding` (the train step's batch sharding) the host loads the rows its devices
    hold (partitioning.process_batch_rows), right for any mesh; without it, an even split by
    process_index/count (default jax.process_index()/jax.process_count()), right only when
    the batch is split over every process. Pass `prepared` (from prepare_data) to reuse loaded
    and tokenised data, or `splits` to train on in-memory examples."""
    if batch_sharding is not None and (process_index is not None or process_count is not None):
        raise ValueError("pass either batch_sharding or process_index/process_count, not both")
    if batch_sharding is None and (process_index is None or process_count is None):
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if prepared is None:
        prepared = prepare_data(config, splits=splits)
    batching = BatchingConfig(
        batch_size=int(_get(config, "batch_size")),
        max_input_length=int(_get(config, "max_input_length", 1024)),
        max_target_length=int(_get(config, "max_target_length", 256)),
        pack=bool(_get(config, "pack", False)),
        seed=int(_get(config, "seed", 0)),
    )
    prepared_for = (prepared.method, prepared.max_input_length, prepared.max_target_length)
    wanted = (
        _get(config, "method", "step_by_step"),
        batching.max_input_length,
        batching.max_target_length,
    )
    if prepared_for != wanted:
        raise ValueError(
            f"data was prepared for (method, max_input_length, max_target_length)={prepared_for}, "
            f"the config asks for {wanted}"
        )
    if batch_sharding is not None:
        from sbsd_jax.train.partitioning import process_batch_rows

        host_rows = process_batch_rows(batch_sharding, rows_per_batch(prepared.train_set, batching))
        return TrainIterator(prepared.train_set, batching, host_rows=host_rows)
    return TrainIterator(
        prepared.train_set, batching, process_index=process_index, process_count=process_count
    )
