"""The synthetic demo task: deterministic from its seed, short texts, correct labels, a teacher
whose completions the real parser and reader handle, with the configured imperfect outputs."""

import dataclasses
import json
import os
import random
import tempfile

import pytest

from sbsd_jax.data.examples import DatasetSpec
from sbsd_jax.data.sources import load_dataset_splits, read_source
from sbsd_jax.data.synthetic import (
    RuleBasedTeacher,
    SyntheticConfig,
    generate_problem,
    generate_split,
    parse_problem,
    rationale_and_answer,
    write_paper_layout,
)
from sbsd_jax.data.teacher_parsing import UnparseableCompletion, parse_completion

SMALL = SyntheticConfig(num_train=300, num_test=60, completions_per_file=128)


def read_tree(folder):
    contents = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path) as f:
                contents[os.path.relpath(path, folder)] = f.read()
    return contents


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    write_paper_layout(str(tmp_path / "a"), SMALL)
    write_paper_layout(str(tmp_path / "b"), SMALL)
    write_paper_layout(str(tmp_path / "c"), dataclasses.replace(SMALL, seed=1))
    a, b, c = (read_tree(tmp_path / name) for name in "abc")
    assert a == b
    assert a != c
    assert sorted(a) == [
        "synthetic/llm/test_CoT_0.json",
        "synthetic/llm/train_CoT_0.json",
        "synthetic/llm/train_CoT_1.json",
        "synthetic/llm/train_CoT_2.json",
        "synthetic/synthetic_test.json",
        "synthetic/synthetic_train.json",
    ]


def test_labels_are_the_value_of_the_steps_and_texts_are_short():
    records, _ = generate_split("train", 300, SMALL)
    for record in records:
        problem = parse_problem(record["input"])
        assert problem is not None and str(problem.answer) == record["label"]
        assert 0 <= int(record["label"]) <= 99
        assert len(record["input"].encode()) < 150
        rationale, answer = rationale_and_answer(problem)
        assert len(rationale.encode()) < 200 and str(answer) == record["label"]
    assert len({r["input"] for r in records}) == len(records)


def test_rationale_spells_out_every_intermediate_result():
    problem = generate_problem(random.Random(3), SyntheticConfig(min_steps=3, max_steps=3))
    rationale, answer = rationale_and_answer(problem)
    assert rationale.count(" = ") == 3
    assert rationale.endswith(f"= {answer}.")


def test_completions_parse_like_a_real_teacher_with_some_imperfect_ones():
    config = SyntheticConfig(wrong_answer_rate=0.1, unparseable_rate=0.1)
    records, completions = generate_split("train", 1000, config)
    parsed, correct, failures = 0, 0, 0
    for record, completion in zip(records, completions, strict=True):
        try:
            result = parse_completion("synthetic", completion)
        except UnparseableCompletion:
            failures += 1
            continue
        parsed += 1
        correct += result.label == record["label"]
        assert "Q:" not in result.rationale
    assert 60 <= failures <= 140
    assert 0.8 <= correct / parsed <= 0.97
    assert any("\n\nQ: " in c and "\nA: " in c for c in completions)


def test_perfect_teacher_when_rates_are_zero():
    config = SyntheticConfig(wrong_answer_rate=0.0, unparseable_rate=0.0)
    records, completions = generate_split("test", 200, config)
    for record, completion in zip(records, completions, strict=True):
        assert parse_completion("synthetic", completion).label == record["label"]


def test_test_problems_never_repeat_train_problems(tmp_path):
    folder = write_paper_layout(str(tmp_path), SMALL)

    def inputs(split):
        with open(os.path.join(folder, f"synthetic_{split}.json")) as f:
            return {json.loads(line)["input"] for line in f}

    assert not inputs("train") & inputs("test")


def test_the_paper_layout_reader_loads_it(tmp_path):
    write_paper_layout(str(tmp_path), SMALL)
    loaded = load_dataset_splits(DatasetSpec(dataset="synthetic", data_dir=str(tmp_path)))
    report = loaded.report.splits
    assert report["train"].num_teacher_outputs + report["valid"].num_teacher_outputs == 300
    assert len(loaded.splits["valid"]) == 30 and len(loaded.splits["test"]) == 60
    assert 0.85 <= report["test"].teacher_accuracy <= 1.0
    assert all(e.rationale and e.llm_label for e in loaded.splits["train"])


def test_synthetic_source_writes_then_reads(tmp_path):
    spec = DatasetSpec(dataset="synthetic", source="synthetic", data_dir=str(tmp_path))
    first = load_dataset_splits(spec)
    assert os.path.isfile(tmp_path / "synthetic" / "synthetic_train.json")
    second = load_dataset_splits(spec)  # reads the files written the first time
    assert first.splits == second.splits
    with pytest.raises(ValueError, match="only serves datasets"):
        load_dataset_splits(DatasetSpec(dataset="cqa", source="synthetic"))


def test_rule_based_teacher_answers_any_synthetic_input():
    teacher = RuleBasedTeacher(SyntheticConfig(wrong_answer_rate=0.0, unparseable_rate=0.0))
    records, _ = generate_split("test", 20, SMALL)
    for record in records:
        completion = teacher.complete(record["input"])
        assert parse_completion("synthetic", completion).label == record["label"]
    with pytest.raises(UnparseableCompletion):
        parse_completion("synthetic", teacher.complete("What is the capital of France?"))


def test_generated_data_without_a_data_dir_leaves_no_folder_behind(tmp_path, monkeypatch):
    """Without config.data_dir the generated files go to a temporary folder that is read into
    memory and removed; the report says the data was not kept instead of naming that folder."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    data = read_source(DatasetSpec(dataset="synthetic_world", source="synthetic"))
    assert data.splits["train"] and data.teacher["train"]
    assert list(tmp_path.iterdir()) == []
    assert set(data.origin.values()) == {"generated (not kept: set config.data_dir)"}
