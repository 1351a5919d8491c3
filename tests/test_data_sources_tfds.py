"""TFDS source under `tfds.testing.mock_data` (offline, nothing prepared on disk): TFDS field
names (anli's 'context', bytes text, ClassLabel ints) become the same Examples as the paper
layout, and teacher outputs join by id."""

import json

import numpy as np
import pytest

from sbsd_jax.data.examples import DataFormatError, DatasetSpec
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.data.tensorflow_runtime import import_tensorflow

tfds = pytest.importorskip("tensorflow_datasets")

ROWS = {
    "esnli": lambda split: [
        {
            "premise": f"{split} p{i}",
            "hypothesis": f"h{i}",
            "label": i % 3,
            "explanation_1": f"e{i}",
            "explanation_2": "",
            "explanation_3": "",
        }
        for i in range(4)
    ],
    "anli": lambda split: [
        {"uid": f"{split}-u{i}", "context": f"c{i}", "hypothesis": f"h{i}", "label": 2}
        for i in range(3)
    ],
    "gsm8k": lambda split: [
        {
            "question": f"{split} q{i}?",
            "answer": f"1 + {i} = <<1+{i}={1 + i}>>{1 + i}\n#### {1 + i}",
            "annotation": "",
            "short_answer": str(1 + i),
        }
        for i in range(12)
    ],
}


def fake_as_dataset(self, split, *args, **kwargs):
    """The rows above for whichever builder is asked, typed by the builder's own features."""
    tf = import_tensorflow()
    rows = ROWS[self.name](str(split))
    return tf.data.Dataset.from_generator(
        lambda: iter(rows),
        output_signature={
            k: tf.TensorSpec((), tf.int64 if isinstance(v, int) else tf.string)
            for k, v in rows[0].items()
        },
    )


@pytest.fixture
def mocked_tfds():
    with tfds.testing.mock_data(as_dataset_fn=fake_as_dataset):
        yield


def test_esnli_from_tfds(mocked_tfds, tmp_path):
    spec = DatasetSpec(dataset="esnli", source="tfds", data_dir=str(tmp_path))
    loaded = load_dataset_splits(spec)
    assert [len(loaded.splits[s]) for s in ("train", "valid", "test")] == [4, 4, 4]
    example = loaded.splits["valid"][2]
    assert (example.input, example.label) == ("validation p2</s>h2", "contradiction")
    human = load_dataset_splits(
        DatasetSpec(
            dataset="esnli", source="tfds", data_dir=str(tmp_path), rationale_source="human"
        )
    )
    assert human.splits["test"][1].rationale == "e1"


def test_anli_context_field_and_teacher_by_id(mocked_tfds, tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "test.jsonl").write_text(
        "\n".join(
            json.dumps({"id": f"test-u{i}", "completion": f"R{i}. So the answer is neutral."})
            for i in (2, 0, 1)
        )
    )
    spec = DatasetSpec(
        dataset="anli1", source="tfds", data_dir=str(tmp_path), rationale_dir=str(teacher)
    )
    loaded = load_dataset_splits(spec)
    test = loaded.splits["test"]
    assert [(e.id, e.input, e.rationale) for e in test] == [
        ("test-u0", "c0</s>h0", "R0."),
        ("test-u1", "c1</s>h1", "R1."),
        ("test-u2", "c2</s>h2", "R2."),
    ]
    assert loaded.report.splits["test"].teacher_accuracy == 0.0  # neutral vs contradiction


def test_gsm8k_has_no_valid_split_so_it_is_carved(mocked_tfds, tmp_path):
    loaded = load_dataset_splits(
        DatasetSpec(dataset="gsm8k", source="tfds", data_dir=str(tmp_path))
    )
    assert [len(loaded.splits[s]) for s in ("train", "valid", "test")] == [10, 2, 12]
    assert sorted(int(e.label) for e in loaded.splits["test"]) == list(range(1, 13))


def test_dataset_without_tfds_default_is_an_error():
    with pytest.raises(DataFormatError, match="no TFDS default"):
        load_dataset_splits(DatasetSpec(dataset="cqa", source="tfds", data_dir="/nowhere"))


def test_unprepared_tfds_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(DataFormatError, match="could not read TFDS 'gsm8k'"):
        load_dataset_splits(DatasetSpec(dataset="gsm8k", source="tfds", data_dir=str(tmp_path)))


def test_an_unknown_tfds_name_is_a_clear_error(tmp_path):
    spec = DatasetSpec(
        dataset="cqa", source="tfds", data_dir=str(tmp_path), tfds_name="no_such_builder"
    )
    with pytest.raises(DataFormatError, match="no TFDS dataset 'no_such_builder' here") as error:
        load_dataset_splits(spec)
    assert str(tmp_path) in str(error.value) and "\n" not in str(error.value)


def test_tensorflow_sees_no_accelerators():
    tf = import_tensorflow()
    assert tf.config.get_visible_devices("GPU") == []
    assert import_tensorflow() is tf
    assert np.asarray(tf.constant([1, 2])).tolist() == [1, 2]
