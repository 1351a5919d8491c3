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
(ascending; on a TPU pod not necessarily adjacent). The trainer derives them from where its
batch sharding puts the rows (sbsd_jax.train.partitioning.process_batch_rows) and hands them to
make_train_iterator: processes whose devices hold the same batch shards, as when the 'tensor'
axis spans processes, load the same rows. Without them, process p of P gets
[p * rows / P, (p + 1) * rows / P) (right when the batch is split over every process). Every
process tokenises the whole training split and derives the same global layout from token
lengths alone, then materialises only its own rows. The stream does not depend on the process
layout, so a state saved on P processes can be restored on P' processes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sbsd_jax.data.causal_lm import (
    CausalFormat,
    as_columns,
    assemble_causal_rows,
    encode_split,
    first_fit_causal_batch,
    make_format,
)
from sbsd_jax.data.causal_lm import count_truncations as count_causal_truncations
from sbsd_jax.data.examples import DataSpec, Example
from sbsd_jax.data.feature_converter import assemble_rows, first_fit_batch
from sbsd_jax.data.features import (
    METHOD_TASKS,
    TASK_KINDS,
    BatchingSpec,
    CausalRowsSpec,
    check_method,
)
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


def rows_per_batch(train_set: TokenizedTrainSet, batching: BatchingSpec) -> int:
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
    """Infinite iterator of host-local numpy batches (keys: features.BATCH_KEYS, or for
    decoder-only rows, batching.row_length > 0, features.CAUSAL_BATCH_KEYS).

    Each batch holds the global batch's rows `host_rows`: given (from the mesh, see
    make_train_iterator), or else this process's even share by process_index/process_count.
    get_state()/set_state() save and restore the stream position (JSON-serialisable), so a
    resumed run sees exactly the batches an uninterrupted one would have; the state does not
    depend on host_rows.
    """

    def __init__(
        self,
        train_set: TokenizedTrainSet,
        batching: BatchingSpec,
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
        if batching.row_length:  # decoder-only rows
            self._config_summary["row_length"] = batching.row_length
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

        if self.batching.row_length:  # decoder-only: a sequence is its prompt + target
            layout, taken = first_fit_causal_batch(
                ([p + t for p, t in lengths] for lengths in stream_lengths()),
                num_rows=self.rows_per_batch,
                row_length=self.batching.row_length,
            )
        else:
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
        if self.batching.row_length:  # decoder-only rows (data/causal_lm.py)
            return assemble_causal_rows(
                row_indices,
                inputs,
                targets,
                task_ids,
                row_length=self.batching.row_length,
                num_rows=len(self.host_rows),
            )
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
# From a DataSpec and a BatchingSpec


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Loaded examples, registered tasks and the tokenised training set of one DataSpec."""

    splits: Mapping[str, Sequence[Example]]
    registered: RegisteredTasks | None  # None for decoder-only rows (no SeqIO tasks)
    train_set: TokenizedTrainSet
    method: str
    max_input_length: int
    max_target_length: int
    report: DataReport | None = None  # None when the examples were passed in
    causal_format: CausalFormat | None = None  # decoder-only: how texts become rows
    row_length: int = 0  # decoder-only: slots of a training row


def prepare_data(
    spec: DataSpec,
    *,
    splits: Mapping[str, Sequence[Example]] | None = None,
    causal: CausalRowsSpec | None = None,
    loaded: LoadedDataset | None = None,
) -> PreparedData:
    """Load spec.dataset (unless `splits` or its `loaded` splits are given), register the
    tasks, tokenise the training split; the data report (counts, parse failures, teacher
    accuracy, truncations) comes with loaded data. `causal`: decoder-only rows instead
    (prepare_causal_data)."""
    method = check_method(spec.method)
    report = None
    if splits is None:
        if loaded is None:
            loaded = load_dataset_splits(spec.dataset)
        splits, report = loaded.splits, loaded.report
    if causal is not None:
        return prepare_causal_data(spec, causal, splits, report)
    vocabulary = make_vocabulary(spec.vocabulary)
    dataset = spec.dataset.dataset
    registered = register_tasks(
        dataset, splits, vocabulary, name_suffix=registration_suffix(splits, vocabulary)
    )
    if report is not None:
        limits = LengthLimits(spec.max_input_length, spec.max_target_length)
        counts = count_truncations(dataset, method, splits, vocabulary.encode, limits)
        report_truncations(report, counts, limits, vocabulary_name(spec.vocabulary))
    train_set = tokenize_train_set(
        registered,
        METHOD_TASKS[method],
        max_input_length=spec.max_input_length,
        max_target_length=spec.max_target_length,
    )
    return PreparedData(
        splits=splits,
        registered=registered,
        train_set=train_set,
        method=method,
        max_input_length=spec.max_input_length,
        max_target_length=spec.max_target_length,
        report=report,
    )


def make_tokenizer(vocabulary: str) -> Any:
    """A decoder-only student's tokenizer: a seqio vocabulary ('byte', a SentencePiece model),
    else a Hugging Face tokenizer (a local folder or a hub id)."""
    if vocabulary == "byte" or vocabulary.endswith(".model"):
        return make_vocabulary(vocabulary)
    import transformers

    return transformers.AutoTokenizer.from_pretrained(vocabulary)


def _causal_train_set(
    fmt: CausalFormat, method: str, dataset: str, train: Sequence[Example], row_length: int
) -> TokenizedTrainSet:
    """The training split as decoder-only sequences: prompts where the T5 set keeps inputs,
    targets (ending in EOS) where it keeps targets."""
    sequences = encode_split(fmt, method, dataset, train, max_length=row_length)
    columns = as_columns(sequences)
    kinds = tuple(columns)
    inputs = tuple(RaggedTokens.from_sequences(columns[kind][0]) for kind in kinds)
    targets = tuple(RaggedTokens.from_sequences(columns[kind][1]) for kind in kinds)
    has_sequence = np.zeros(len(train), dtype=bool)
    for ragged in targets:
        has_sequence |= ragged.lengths > 0
    return TokenizedTrainSet(
        kinds=kinds,
        inputs=inputs,
        targets=targets,
        example_indices=np.flatnonzero(has_sequence).astype(np.int64),
    )


def prepare_causal_data(
    spec: DataSpec,
    causal: CausalRowsSpec,
    splits: Mapping[str, Sequence[Example]],
    report: DataReport | None,
) -> PreparedData:
    """Decoder-only rows (data/causal_lm.py): the method's tasks as prompt + target text in the
    configured template; the report counts prompts longer than the evaluation limit and
    training targets trimmed to the row."""
    method, dataset = spec.method, spec.dataset.dataset
    fmt = make_format(make_tokenizer(spec.vocabulary), causal.template)
    if report is not None:
        counts = count_causal_truncations(
            fmt,
            method,
            dataset,
            splits,
            max_length=causal.row_length,
            max_prompt_length=causal.max_prompt_length,
        )
        limits = LengthLimits(causal.max_prompt_length, causal.row_length)
        report_truncations(report, counts, limits, vocabulary_name(spec.vocabulary))
    return PreparedData(
        splits=splits,
        registered=None,
        train_set=_causal_train_set(fmt, method, dataset, splits["train"], causal.row_length),
        method=method,
        max_input_length=spec.max_input_length,
        max_target_length=spec.max_target_length,
        report=report,
        causal_format=fmt,
        row_length=causal.row_length,
    )


def make_train_iterator(
    prepared: PreparedData,
    batching: BatchingSpec,
    *,
    host_rows: slice | Sequence[int] | np.ndarray | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> TrainIterator:
    """This host's share of the global batches of `prepared` (from prepare_data).

    `host_rows`: the rows of each global batch this process loads, as the trainer derives them
    from its mesh (sbsd_jax.train.partitioning.process_batch_rows; right for any mesh). Without
    them, an even split by process_index/count (default jax.process_index()/process_count()),
    right only when the batch is split over every process."""
    if host_rows is not None and (process_index is not None or process_count is not None):
        raise ValueError("pass either host_rows or process_index/process_count, not both")
    prepared_for = (prepared.max_input_length, prepared.max_target_length, prepared.row_length)
    wanted = (batching.max_input_length, batching.max_target_length, batching.row_length)
    if prepared_for != wanted:
        raise ValueError(
            f"data was prepared for (max_input_length, max_target_length, row_length)="
            f"{prepared_for}, the batching asks for {wanted}"
        )
    if host_rows is not None:
        return TrainIterator(prepared.train_set, batching, host_rows=host_rows)
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    return TrainIterator(
        prepared.train_set, batching, process_index=process_index, process_count=process_count
    )
