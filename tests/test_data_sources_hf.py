"""Hugging Face source on local copies the tests build (`save_to_disk`, JSON folder): the same
examples as the paper layout, split names mapped as the reference's split_map, teacher outputs
joined from a rationale folder. No network."""

import json

import pytest

from sbsd_jax.data.examples import DataFormatError, DatasetSpec
from sbsd_jax.data.sources import load_dataset_splits

datasets = pytest.importorskip("datasets")

CHOICES = ["park", "coloring book", "garden center", "math problem", "gravity"]


def cos_e_split(offset, n):
    return datasets.Dataset.from_dict(
        {
            "id": [f"q{offset + i}" for i in range(n)],
            "question": [f"Question {offset + i}?" for i in range(n)],
            "choices": [CHOICES] * n,
            "answer": [CHOICES[i % 5] for i in range(n)],
            "abstractive_explanation": [f"human {offset + i}" for i in range(n)],
            "extractive_explanation": ["x"] * n,
        }
    )


def test_cos_e_save_to_disk_with_teacher_lists_by_order(tmp_path):
    path = str(tmp_path / "cos_e")
    datasets.DatasetDict(
        {"train": cos_e_split(0, 20), "validation": cos_e_split(100, 3)}
    ).save_to_disk(path)
    teacher = tmp_path / "llm"
    teacher.mkdir()
    (teacher / "test_CoT_0.json").write_text(
        json.dumps([f"R{i}. So the answer is (a) park.\n\nQ: next" for i in range(3)])
    )
    spec = DatasetSpec(dataset="cqa", source="hf", hf_name=path, rationale_dir=str(teacher))
    loaded = load_dataset_splits(spec)
    test = loaded.splits["test"]  # cos_e's validation split is the paper's test set
    assert [e.id for e in test] == ["q100", "q101", "q102"]
    assert test[0].input.startswith("Question 100?\nAnswer Choices:\n(a) park\n(b) coloring")
    assert [e.rationale for e in test] == ["R0.", "R1.", "R2."]
    assert loaded.report.splits["test"].teacher_correct == 1  # labels park, coloring book, ...
    assert [len(loaded.splits[s]) for s in ("train", "valid")] == [18, 2]  # valid carved
    assert loaded.report.splits["train"].num_teacher_outputs == 0


def test_esnli_and_anli_split_names(tmp_path):
    nli = {
        "premise": ["P"] * 2,
        "hypothesis": ["H"] * 2,
        "label": [0, 2],
        "explanation_1": ["E"] * 2,
        "explanation_2": [""] * 2,
        "explanation_3": [""] * 2,
    }
    esnli_path = str(tmp_path / "esnli")
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(nli) for s in ("train", "validation", "test")}
    ).save_to_disk(esnli_path)
    loaded = load_dataset_splits(DatasetSpec(dataset="esnli", source="hf", hf_name=esnli_path))
    assert [e.label for e in loaded.splits["valid"]] == ["entailment", "contradiction"]
    assert loaded.splits["test"][0].input == "P</s>H"

    anli = {
        "uid": ["a", "b"],
        "premise": ["P"] * 2,
        "hypothesis": ["H"] * 2,
        "label": [1, 1],
        "reason": ["", "because"],
    }
    anli_path = str(tmp_path / "anli")
    datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict(anli)
            for s in ("train_r1", "dev_r1", "test_r1", "train_r2", "dev_r2", "test_r2")
        }
    ).save_to_disk(anli_path)
    spec = DatasetSpec(
        dataset="anli1",
        source="hf",
        hf_name=anli_path,
        rationale_source="human",
        drop_unparseable=True,
    )
    loaded = load_dataset_splits(spec)
    assert [e.id for e in loaded.splits["train"]] == ["b"]  # 'a' has an empty human reason
    assert loaded.report.splits["train"].dropped_unparseable == 1
    assert loaded.splits["valid"][1].rationale == "because"


def test_gsm8k_local_json_copy_with_rationales_by_id(tmp_path):
    folder = tmp_path / "gsm8k_json"
    folder.mkdir()
    for split, n in (("train", 10), ("test", 2)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(
                    json.dumps(
                        {"question": f"{split} {i}?", "answer": f"2 + 2 = <<2+2=4>>4\n#### {i}"}
                    )
                    + "\n"
                )
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "test.jsonl").write_text(
        json.dumps({"id": "gsm8k-test-1", "completion": "2 + 2 = 4. The answer is 1."}) + "\n"
    )
    spec = DatasetSpec(
        dataset="gsm8k", source="hf", hf_name=str(folder), rationale_dir=str(teacher)
    )
    loaded = load_dataset_splits(spec)
    test = loaded.splits["test"]
    assert [(e.label, e.llm_label) for e in test] == [("0", None), ("1", "1")]
    assert test[0].parse_error == "no teacher output for this example"
    assert loaded.report.splits["test"].teacher_correct == 1
    human = load_dataset_splits(
        DatasetSpec(dataset="gsm8k", source="hf", hf_name=str(folder), rationale_source="human")
    )
    assert human.splits["test"][0].rationale == "2 + 2 = 4"


def test_bad_rows_name_split_row_and_field(tmp_path):
    path = str(tmp_path / "esnli")
    bad = {"premise": ["P"] * 3, "hypothesis": ["H"] * 3, "label": [0, 1, 7]}
    datasets.DatasetDict(
        {s: datasets.Dataset.from_dict(bad) for s in ("train", "validation", "test")}
    ).save_to_disk(path)
    with pytest.raises(DataFormatError, match=r"esnli\[train\], line 3, field 'label'"):
        load_dataset_splits(DatasetSpec(dataset="esnli", source="hf", hf_name=path))


def test_missing_split_and_unreachable_hub_are_clear_errors(tmp_path, monkeypatch):
    path = str(tmp_path / "cos_e")
    datasets.DatasetDict({"train": cos_e_split(0, 4)}).save_to_disk(path)
    with pytest.raises(DataFormatError, match="no test split"):
        load_dataset_splits(DatasetSpec(dataset="cqa", source="hf", hf_name=path))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # never touch the network
    with pytest.raises(DataFormatError, match="could not load Hugging Face dataset"):
        load_dataset_splits(
            DatasetSpec(dataset="cqa", source="hf", hf_name="nobody/no-such-dataset-sbsd")
        )
