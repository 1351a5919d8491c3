"""SeqIO tasks `<ds>_predict`, `<ds>_explain`, `<ds>_standard`, `<ds>_cot` and the mixture
`<ds>_step_by_step`, over the in-memory examples a source loaded.

Every task is the same chain: raw fields -> (inputs, targets) text from `features.TASK_KINDS`
-> seqio tokenize -> trim and append EOS (what HF truncation does: content cut to length-1, EOS
kept). Each example also carries `task_id` (the per-token task identity after conversion),
`example_index` (its position in the split, to pair predict and explain rows), and the raw
`label` and `id` strings, so evaluation scores the untokenised label.

Registering the same dataset twice replaces the earlier tasks (idempotent); give a
`name_suffix` (the pipeline uses a data fingerprint) to keep two configurations side by side.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from sbsd_jax.data.examples import SPLITS, Example
from sbsd_jax.data.features import (
    METHOD_EVAL_TASK,
    TASK_KINDS,
    TaskKind,
    answer_cue,
    check_method,
    mixture_name,
    task_name,
)
from sbsd_jax.data.tensorflow_runtime import import_tensorflow
from sbsd_jax.data.vocabulary import vocabulary_description

tf = import_tensorflow()

import seqio  # noqa: E402  (after TensorFlow is imported with accelerators hidden)

# Features a task example carries besides the tokenised inputs/targets.
PASSTHROUGH_FEATURES: tuple[str, ...] = ("task_id", "example_index", "label", "id")


@dataclasses.dataclass(frozen=True)
class RegisteredTasks:
    """Names of the tasks and mixture registered for one dataset + vocabulary + examples."""

    dataset: str
    suffix: str
    task_names: Mapping[str, str]  # kind -> registered seqio task name
    mixture: str
    vocabulary: seqio.Vocabulary
    num_examples: Mapping[str, int]  # split -> examples before per-task filtering

    def task(self, kind: str) -> seqio.Task:
        return seqio.TaskRegistry.get(self.task_names[kind])


def examples_fingerprint(splits: Mapping[str, Sequence[Example]]) -> str:
    """sha256 of every example's fields, split by split: changes whenever the data does."""
    digest = hashlib.sha256()
    for split in sorted(splits):
        digest.update(split.encode())
        for example in splits[split]:
            digest.update(json.dumps(dataclasses.astuple(example)).encode())
    return digest.hexdigest()


def _has_rationale(example: Example) -> bool:
    return bool(example.rationale)


def _source_tensors(examples: Sequence[Example]) -> dict[str, np.ndarray]:
    """Column arrays of the raw fields (rationale '' where missing, flagged by has_rationale)."""
    return {
        "id": np.asarray([e.id for e in examples], dtype=object),
        "input": np.asarray([e.input for e in examples], dtype=object),
        "label": np.asarray([e.label for e in examples], dtype=object),
        "rationale": np.asarray([e.rationale or "" for e in examples], dtype=object),
        "has_rationale": np.asarray([_has_rationale(e) for e in examples], dtype=bool),
        "example_index": np.arange(len(examples), dtype=np.int32),
    }


def _dataset_fn_for(splits: Mapping[str, Sequence[Example]]):
    columns = {split: _source_tensors(examples) for split, examples in splits.items()}

    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del shuffle_files, seed  # one in-memory "file"; order is the split's order
        if split not in columns:
            raise ValueError(f"split {split!r} not loaded; loaded splits: {sorted(columns)}")
        dtypes = {"has_rationale": tf.bool, "example_index": tf.int32}
        return tf.data.Dataset.from_tensor_slices(
            {
                key: tf.constant(value, dtype=dtypes.get(key, tf.string))
                for key, value in columns[split].items()
            }
        )

    return dataset_fn


def build_inputs_and_targets(
    dataset: tf.data.Dataset, *, kind: TaskKind, cue: str
) -> tf.data.Dataset:
    """SeqIO preprocessor: raw fields -> inputs/targets text + task_id and passthrough fields.

    Tasks that need a rationale skip examples without one (no blank targets)."""
    if kind.needs_rationale:
        dataset = dataset.filter(lambda fields: fields["has_rationale"])

    def to_text(fields: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {
            "inputs": kind.inputs(fields),
            "targets": kind.target(fields, cue),
            "task_id": tf.constant(kind.task_id, tf.int32),
            "example_index": fields["example_index"],
            "label": fields["label"],
            "id": fields["id"],
        }

    return dataset.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)


def raw_label_postprocessor(output, example=None, is_target: bool = False):
    """Targets are scored as the raw label string, not the decoded label tokens."""
    if is_target and example is not None:
        label = example["label"]
        return label.decode("utf-8") if isinstance(label, bytes) else str(label)
    return output


def register_tasks(
    dataset: str,
    splits: Mapping[str, Sequence[Example]],
    vocabulary: seqio.Vocabulary,
    *,
    kinds: Sequence[str] = tuple(TASK_KINDS),
    name_suffix: str = "",
) -> RegisteredTasks:
    """Register `<dataset>_<kind>[_<suffix>]` tasks and the `<dataset>_step_by_step` mixture.

    splits: split name -> examples (train/valid/test as the sources give them). Registering a
    name again replaces the old task, so repeated calls are safe.
    """
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown split(s) {sorted(unknown)}; expected a subset of {SPLITS}")
    cue = answer_cue(dataset)
    output_features = {
        "inputs": seqio.Feature(vocabulary=vocabulary, add_eos=True, required=True),
        "targets": seqio.Feature(vocabulary=vocabulary, add_eos=True),
        # An output feature (not only a passthrough) so that mixtures and seqio.get_dataset
        # keep it: the feature converter turns it into decoder_task_ids.
        "task_id": seqio.Feature(
            vocabulary=seqio.PassThroughVocabulary(size=0),
            add_eos=False,
            required=False,
            dtype=tf.int32,
            rank=0,
        ),
    }
    source = seqio.FunctionDataSource(
        _dataset_fn_for(splits),
        splits=tuple(splits),
        num_input_examples={split: len(examples) for split, examples in splits.items()},
    )
    names: dict[str, str] = {}
    for kind_name in kinds:
        kind = TASK_KINDS[kind_name]
        name = task_name(dataset, kind_name, name_suffix)
        seqio.TaskRegistry.remove(name)
        seqio.TaskRegistry.add(
            name,
            source=source,
            preprocessors=[
                functools.partial(build_inputs_and_targets, kind=kind, cue=cue),
                seqio.preprocessors.tokenize,
                seqio.preprocessors.append_eos_after_trim,
            ],
            output_features=output_features,
            postprocess_fn=raw_label_postprocessor if kind.task_id == 0 else None,
            metric_fns=[],
            shuffle_buffer_size=None,
        )
        names[kind_name] = name
    mixture = mixture_name(dataset, name_suffix)
    if "predict" in names and "explain" in names:
        seqio.MixtureRegistry.remove(mixture)
        seqio.MixtureRegistry.add(mixture, [names["predict"], names["explain"]], default_rate=1.0)
    return RegisteredTasks(
        dataset=dataset,
        suffix=name_suffix,
        task_names=names,
        mixture=mixture,
        vocabulary=vocabulary,
        num_examples={split: len(examples) for split, examples in splits.items()},
    )


COLUMN_FEATURES: tuple[str, ...] = ("inputs", "targets", "example_index")


@tf.autograph.experimental.do_not_convert
def _task_dataset(
    registered: RegisteredTasks,
    kind: str,
    split: str,
    max_input_length: int,
    max_target_length: int,
    keep: Sequence[str] = (),
) -> tf.data.Dataset:
    """The task's split, unshuffled, one epoch (only the features in `keep`, if given).

    Built with autograph off: every map function here (SeqIO's and ours) is plain graph code,
    and converting them cost about 2 s of each process's start-up for the same graph."""
    ds = registered.task(kind).get_dataset(
        sequence_length={"inputs": max_input_length, "targets": max_target_length},
        split=split,
        shuffle=False,
        use_cached=False,
        num_epochs=1,
    )
    if keep:
        ds = ds.map(lambda example: {key: example[key] for key in keep})
    return ds


def tokenized_examples(
    registered: RegisteredTasks,
    kind: str,
    split: str,
    *,
    max_input_length: int,
    max_target_length: int,
) -> Iterator[dict[str, np.ndarray]]:
    """The task's examples in split order, tokenised and trimmed (inputs/targets end in EOS)."""
    ds = _task_dataset(registered, kind, split, max_input_length, max_target_length)
    yield from ds.as_numpy_iterator()


def tokenized_columns(
    registered: RegisteredTasks,
    kind: str,
    split: str,
    *,
    max_input_length: int,
    max_target_length: int,
    chunk_size: int = 4096,
) -> dict[str, list[np.ndarray] | np.ndarray]:
    """The whole split through the task at once: 'inputs' and 'targets' (lists of int32 token
    arrays) and 'example_index', in split order. Same tokens as `tokenized_examples`, read in
    ragged chunks because per-example reads dominate the start-up time otherwise."""
    ds = _task_dataset(
        registered, kind, split, max_input_length, max_target_length, keep=COLUMN_FEATURES
    )
    columns: dict[str, list] = {"inputs": [], "targets": [], "example_index": []}
    for chunk in ds.ragged_batch(chunk_size):
        for key in ("inputs", "targets"):
            values = chunk[key].flat_values.numpy().astype(np.int32)
            splits = chunk[key].row_splits.numpy()
            columns[key].extend(np.split(values, splits[1:-1]))
        columns["example_index"].append(chunk["example_index"].numpy())
    indices = np.concatenate(columns["example_index"]) if columns["example_index"] else np.zeros(0)
    return {
        "inputs": columns["inputs"],
        "targets": columns["targets"],
        "example_index": indices.astype(np.int64),
    }


@dataclasses.dataclass(frozen=True)
class EvalExamples:
    """What decoding-based evaluation needs: model inputs, raw labels and ids, in split order.

    encoder_input_tokens: int32 [N, max_input_length], 0-padded, each row ending in EOS.
    labels: the raw label strings (metrics compare against these, not decoded tokens).
    """

    encoder_input_tokens: np.ndarray
    labels: list[str]
    ids: list[str]
    task: str


def eval_examples(
    registered: RegisteredTasks,
    method: str,
    split: str,
    *,
    max_input_length: int,
) -> EvalExamples:
    """Tokenised inputs of the task `method` is evaluated on (predict for step_by_step, standard
    for standard and cot), with raw label strings and ids."""
    kind = METHOD_EVAL_TASK[check_method(method)]
    if kind not in registered.task_names:
        raise ValueError(f"task kind {kind!r} was not registered for {registered.dataset}")
    rows, labels, ids = [], [], []
    for example in tokenized_examples(
        registered, kind, split, max_input_length=max_input_length, max_target_length=1 << 16
    ):
        rows.append(example["inputs"])
        labels.append(example["label"].decode("utf-8"))
        ids.append(example["id"].decode("utf-8"))
    tokens = np.zeros((len(rows), max_input_length), dtype=np.int32)
    for row, ids_row in enumerate(rows):
        tokens[row, : len(ids_row)] = ids_row
    return EvalExamples(
        encoder_input_tokens=tokens,
        labels=labels,
        ids=ids,
        task=registered.task_names[kind],
    )


def registration_suffix(
    splits: Mapping[str, Sequence[Example]], vocabulary: seqio.Vocabulary
) -> str:
    """A short name suffix that differs whenever examples or vocabulary differ."""
    digest = hashlib.sha256(
        (examples_fingerprint(splits) + vocabulary_description(vocabulary)).encode()
    )
    return digest.hexdigest()[:12]
