"""Training input pipeline: batch layout, determinism, host sharding and resumable position."""

import json
import pathlib

import numpy as np
import pytest
from ml_collections import ConfigDict

from sbsd_jax.data.examples import DatasetSpec, Example
from sbsd_jax.data.feature_converter import first_fit_batch, next_fit_rows
from sbsd_jax.data.features import BATCH_KEYS, TASK_LABEL, TASK_RATIONALE
from sbsd_jax.data.pipeline import (
    IteratorStateError,
    TrainIterator,
    epoch_permutation,
    make_train_iterator,
    prepare_data,
)
from sbsd_jax.data.vocabulary import make_vocabulary
from sbsd_jax.experiments.config_files import load_config_file
from sbsd_jax.settings import from_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"

BYTE = make_vocabulary("byte")
NUM_TRAIN = 11
NO_RATIONALE = 3  # index of the train example whose teacher completion did not parse


def train_examples(tag: str = "") -> list[Example]:
    return [
        Example(
            id=f"ex{i}",
            input=f"question {i}{tag}" + " long" * (i % 4),
            label=f"answer {i}",
            rationale=None if i == NO_RATIONALE else f"reason {i}" + " more" * (i % 3),
            parse_error="no answer cue" if i == NO_RATIONALE else None,
        )
        for i in range(NUM_TRAIN)
    ]


SPLITS = {"train": train_examples(), "test": [Example("t0", "test question", "answer 0")]}


def make_config(**overrides) -> ConfigDict:
    """configs/base.py with the fields these tests set (a run's config has every field)."""
    config = load_config_file(CONFIGS / "base.py")
    config.update(
        {
            "dataset": "jsonl",
            "data_source": "jsonl",
            "data_dir": "",
            "method": "step_by_step",
            "label_type": "gt",
            "train_fraction": 1.0,
            "subsample_seed": 0,
            "max_input_length": 40,
            "max_target_length": 24,
            "pack": False,
            "batch_size": 4,
            "vocabulary": "byte",
            "drop_unparseable": False,
            "seed": 0,
        }
    )
    config.update(overrides)
    return config


def prepare(config: ConfigDict, splits=SPLITS):
    return prepare_data(from_config.data_spec(config), splits=splits)


@pytest.fixture(scope="module")
def prepared():
    """Tokenised once for the module: step_by_step on the byte vocabulary."""
    return prepare(make_config())


def iterator(prepared, **overrides):
    process = {k: overrides.pop(k) for k in ("process_index", "process_count") if k in overrides}
    process.setdefault("process_index", 0)
    process.setdefault("process_count", 1)
    batching = from_config.batching_spec(make_config(**overrides))
    return make_train_iterator(prepared, batching, **process)


def take(it, count: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(count)]


def assert_batches_equal(left, right):
    assert len(left) == len(right)
    for a, b in zip(left, right, strict=True):
        assert set(a) == set(b) == set(BATCH_KEYS)
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def decode_input(row_tokens: np.ndarray) -> str:
    return BYTE.decode([int(t) for t in row_tokens if t > 1])


def test_batches_have_the_contract_keys_shapes_and_dtypes(prepared):
    batch = next(iterator(prepared))
    assert set(batch) == set(BATCH_KEYS)
    for key, value in batch.items():
        width = 40 if key.startswith("encoder_") else 24
        assert value.shape == (8, width), key  # 4 examples x (predict, explain)
        assert value.dtype == (np.float32 if key == "decoder_loss_weights" else np.int32), key


def test_step_by_step_rows_pair_each_examples_predict_and_explain(prepared):
    batch = next(iterator(prepared))
    for pair in range(4):
        predict, explain = (
            decode_input(batch["encoder_input_tokens"][2 * pair]),
            decode_input(batch["encoder_input_tokens"][2 * pair + 1]),
        )
        assert predict.startswith("predict: question ")
        question = predict.removeprefix("predict: ")
        if question.startswith(f"question {NO_RATIONALE}"):
            assert explain == ""  # no rationale: an all-pad row that carries no loss
            assert not batch["decoder_loss_weights"][2 * pair + 1].any()
        else:
            assert explain == "explain: " + question
        weights = batch["decoder_loss_weights"]
        assert set(batch["decoder_task_ids"][2 * pair][weights[2 * pair] > 0]) == {TASK_LABEL}
        explain_ids = batch["decoder_task_ids"][2 * pair + 1][weights[2 * pair + 1] > 0]
        assert set(explain_ids) <= {TASK_RATIONALE}


def test_each_epoch_visits_every_example_once_in_a_seeded_order(prepared):
    it = iterator(prepared, batch_size=1, method="step_by_step")
    first_epoch = [decode_input(next(it)["encoder_input_tokens"][0]) for _ in range(NUM_TRAIN)]
    second_epoch = [decode_input(next(it)["encoder_input_tokens"][0]) for _ in range(NUM_TRAIN)]
    assert sorted(first_epoch) == sorted(second_epoch)
    assert len(set(first_epoch)) == NUM_TRAIN
    assert first_epoch != second_epoch  # reshuffled by (seed, epoch)
    order = epoch_permutation(0, 0, NUM_TRAIN)
    expected = [f"predict: {SPLITS['train'][i].input}" for i in order]
    assert first_epoch == expected


def test_same_seed_same_batches_other_seed_other_order(prepared):
    assert_batches_equal(take(iterator(prepared), 6), take(iterator(prepared), 6))
    other = take(iterator(prepared, seed=1), 1)[0]
    same = take(iterator(prepared), 1)[0]
    assert not np.array_equal(other["encoder_input_tokens"], same["encoder_input_tokens"])


@pytest.mark.parametrize("pack", [False, True])
def test_two_hosts_shares_together_are_the_single_host_global_batch(prepared, pack):
    whole = take(iterator(prepared, pack=pack), 5)
    host0 = take(iterator(prepared, pack=pack, process_index=0, process_count=2), 5)
    host1 = take(iterator(prepared, pack=pack, process_index=1, process_count=2), 5)
    joined = [
        {key: np.concatenate([a[key], b[key]]) for key in BATCH_KEYS}
        for a, b in zip(host0, host1, strict=True)
    ]
    assert host0[0]["encoder_input_tokens"].shape == (4, 40)  # contiguous half of 8 rows
    assert_batches_equal(joined, whole)


def test_rows_that_do_not_split_over_processes_are_an_error(prepared):
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        iterator(prepared, process_index=0, process_count=3)


def batch_sharding(**mesh: int):
    """The train step's batch sharding on a mesh of the 8 fake devices (tests/conftest.py)."""
    import jax
    from jax.sharding import Mesh

    from sbsd_jax.train import partitioning

    sizes = tuple(mesh[name] for name in partitioning.MESH_AXES)
    devices = np.asarray(jax.devices()[: int(np.prod(sizes))]).reshape(sizes)
    return partitioning.batch_sharding(Mesh(devices, partitioning.MESH_AXES))


@pytest.mark.parametrize("pack", [False, True])
def test_given_host_rows_are_those_rows_of_the_global_batch(prepared, pack):
    """Processes sharing rows (a tensor axis across them) pass the same rows; any ascending
    rows are those rows of the global batch, and the saved position does not depend on them."""
    whole = take(iterator(prepared, pack=pack), 4)
    batching = iterator(prepared, pack=pack).batching
    middle = TrainIterator(prepared.train_set, batching, host_rows=slice(2, 6))
    for batch, expected in zip(take(middle, 2), whole[:2], strict=True):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(batch[key], expected[key][2:6], err_msg=key)
    default = iterator(prepared, pack=pack)
    take(default, 2)
    assert middle.get_state() == default.get_state()
    everything = TrainIterator(prepared.train_set, batching, host_rows=slice(0, 8))
    everything.set_state(json.loads(json.dumps(middle.get_state())))
    assert_batches_equal(take(everything, 2), whole[2:])
    # A TPU pod's device order can give a host rows that are not adjacent.
    apart = TrainIterator(prepared.train_set, batching, host_rows=[0, 1, 6, 7])
    for batch, expected in zip(take(apart, 2), whole[:2], strict=True):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(batch[key], expected[key][[0, 1, 6, 7]], err_msg=key)
    for bad in (slice(0, 9), slice(4, 4), slice(-2, None), [3, 1], [2, 2], []):
        with pytest.raises(ValueError, match="must be ascending, distinct, non-empty rows"):
            TrainIterator(prepared.train_set, batching, host_rows=bad)


def test_rows_come_from_the_batch_sharding_when_given(prepared):
    """One process holds every device, so it loads the whole batch on any mesh (the 2-process
    case is tests/test_multihost.py); rows must split over the data*fsdp shards."""
    from sbsd_jax.train.partitioning import process_batch_rows

    whole = take(iterator(prepared), 2)
    batching = from_config.batching_spec(make_config())
    for mesh in ({"data": 2, "fsdp": 4, "tensor": 1}, {"data": 1, "fsdp": 2, "tensor": 4}):
        rows = process_batch_rows(batch_sharding(**mesh), 8)
        sharded = make_train_iterator(prepared, batching, host_rows=rows)
        assert sharded.host_rows.tolist() == list(range(8))
        assert_batches_equal(take(sharded, 2), whole)
    with pytest.raises(ValueError, match="does not split over the 8 batch shards"):
        process_batch_rows(batch_sharding(data=1, fsdp=8, tensor=1), 3 * 2)
    with pytest.raises(ValueError, match="not both"):
        make_train_iterator(prepared, batching, host_rows=range(8), process_index=0)


@pytest.mark.parametrize("pack", [False, True])
def test_resume_from_saved_state_gives_the_batches_of_an_uninterrupted_run(prepared, pack):
    uninterrupted = take(iterator(prepared, pack=pack), 9)  # crosses epoch boundaries
    for stop_after in (0, 2, 3, 5):
        first = iterator(prepared, pack=pack)
        take(first, stop_after)
        state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
        resumed = iterator(prepared, pack=pack)
        resumed.set_state(state)
        assert_batches_equal(take(resumed, 9 - stop_after), uninterrupted[stop_after:])


def test_state_is_small_and_names_epoch_position_seed_and_fingerprint(prepared):
    it = iterator(prepared)
    take(it, 3)  # 12 examples: one epoch of 11 plus 1
    state = it.get_state()
    assert (state["epoch"], state["position"], state["seed"]) == (1, 1, 0)
    assert len(state["fingerprint"]) == 64


def test_a_state_from_another_run_is_refused_with_the_reason(prepared):
    state = iterator(prepared).get_state()
    with pytest.raises(IteratorStateError, match="seed 0, this run uses seed 5"):
        iterator(prepared, seed=5).set_state(state)
    with pytest.raises(IteratorStateError, match="batch_size: saved 4, now 2"):
        iterator(prepared, batch_size=2).set_state(state)
    with pytest.raises(IteratorStateError, match="pack: saved False, now True"):
        iterator(prepared, pack=True).set_state(state)
    other_data = prepare(
        make_config(), splits={"train": train_examples(tag="!"), "test": SPLITS["test"]}
    )
    with pytest.raises(IteratorStateError, match="tokenised training data differs"):
        iterator(other_data).set_state(state)
    with pytest.raises(IteratorStateError, match="not a train iterator state"):
        iterator(prepared).set_state({"epoch": 0})
    with pytest.raises(IteratorStateError, match="outside an epoch"):
        iterator(prepared).set_state({**state, "position": NUM_TRAIN})


def test_packed_rows_hold_several_sequences_and_keep_each_pair_in_one_batch():
    long_rows = {"max_input_length": 128, "max_target_length": 48}
    prepared = prepare(make_config(**long_rows))
    it = iterator(prepared, pack=True, batch_size=2, **long_rows)
    order = np.concatenate([epoch_permutation(0, epoch, NUM_TRAIN) for epoch in range(3)])
    consumed = 0
    for _ in range(4):
        batch = next(it)
        assert batch["encoder_input_tokens"].shape == (4, 128)  # rows stay batch x tasks
        assert batch["encoder_segment_ids"].max() >= 2  # several sequences share a row
        seen = []
        for row, segments in zip(
            batch["encoder_input_tokens"], batch["encoder_segment_ids"], strict=True
        ):
            for segment in range(1, segments.max() + 1):
                seen.append(decode_input(row[segments == segment]))
        predicts = [s.removeprefix("predict: ") for s in seen if s.startswith("predict: ")]
        explains = [s.removeprefix("explain: ") for s in seen if s.startswith("explain: ")]
        # Every explain sits in the batch of its predict (first-fit may put it in another row).
        assert sorted(explains) == sorted(
            q for q in predicts if not q.startswith(f"question {NO_RATIONALE}")
        )
        # The batch holds exactly the next examples of the seeded stream: none skipped or
        # repeated, and the iterator position moves past just those.
        taken = len(predicts)
        expected = [SPLITS["train"][i].input for i in order[consumed : consumed + taken]]
        assert sorted(predicts) == sorted(expected)
        consumed += taken
        assert it.get_state()["epoch"] * NUM_TRAIN + it.get_state()["position"] == consumed
    assert consumed > 8


def test_packed_batches_are_the_first_fit_layout_of_the_example_stream():
    # Long and short questions in stream order: short sequences fill the gaps long ones leave.
    stream_lengths = (20, 20, 5, 5, 20, 5, 5, 20, 5, 20, 5, 5)
    order = epoch_permutation(0, 0, len(stream_lengths))
    questions = [""] * len(stream_lengths)
    for position, example in enumerate(order):
        questions[example] = "q" * stream_lengths[position]
    splits = {
        "train": [Example(f"ex{i}", q, "a", rationale="r") for i, q in enumerate(questions)],
        "test": SPLITS["test"],
    }
    rows = {"max_input_length": 48, "max_target_length": 24}
    prepared = prepare(make_config(**rows), splits=splits)
    it = iterator(prepared, pack=True, batch_size=3, **rows)
    batch = next(it)
    lengths = []  # byte vocabulary: "predict: " / "explain: " + question bytes + EOS
    for i in order:
        n_in = len("predict: ") + len(questions[i]) + 1
        lengths.append([(n_in, 2), (n_in, 2)])
    layout, taken = first_fit_batch(lengths, num_rows=6, **rows)
    assert it.get_state()["position"] == taken
    for r, row in enumerate(layout):
        segments = batch["encoder_segment_ids"][r]
        assert segments.max() == len(row)
        for segment, (offset, index) in enumerate(row, start=1):
            assert int((segments == segment).sum()) == lengths[offset][index][0]
    assert not batch["encoder_segment_ids"][len(layout) :].any()  # unused rows are all pad
    # Next-fit would lay the same sequences out differently (in more rows).
    flat = [pair for example in lengths[:taken] for pair in example]
    next_fit = next_fit_rows([n for n, _ in flat], [n for _, n in flat], **rows)
    assert len(next_fit) > len(layout)


def test_standard_and_cot_use_one_row_per_example_and_cot_skips_missing_rationales():
    config = make_config(method="standard")
    standard = make_train_iterator(
        prepare(config), from_config.batching_spec(config), process_index=0, process_count=1
    )
    assert next(standard)["encoder_input_tokens"].shape == (4, 40)
    assert standard.examples_per_epoch == NUM_TRAIN
    config = make_config(method="cot")
    cot = make_train_iterator(
        prepare(config), from_config.batching_spec(config), process_index=0, process_count=1
    )
    assert cot.examples_per_epoch == NUM_TRAIN - 1
    batch = next(cot)
    assert set(batch["decoder_task_ids"][batch["decoder_loss_weights"] > 0]) == {TASK_LABEL}


def test_data_prepared_for_other_lengths_is_refused(prepared):
    with pytest.raises(ValueError, match="data was prepared for"):
        iterator(prepared, max_input_length=64)


def test_dataset_spec_comes_from_the_trainer_config():
    spec = from_config.dataset_spec(
        make_config(
            dataset="cqa",
            data_source="paper",
            data_dir="/data",
            train_fraction=0.25,
            subsample_seed=2,
            label_type="llm",
        )
    )
    assert spec == DatasetSpec(
        dataset="cqa",
        source="paper",
        data_dir="/data",
        train_fraction=0.25,
        subsample_seed=2,
        label_type="llm",
        drop_unparseable=False,
    )
