"""Paper-layout and JSONL sources on fixtures written here: formatting as the reference,
teacher outputs joined and counted, the valid split and subsampling as the reference's
`train_test_split`, and clear errors for bad input."""

import json
import math
import os

import pytest

from sbsd_jax.data.examples import (
    KNOWN_DATASETS,
    DataFormatError,
    DatasetSpec,
    Example,
    UnknownDatasetError,
)
from sbsd_jax.data.sources import load_dataset_splits
from sbsd_jax.data.subsample import (
    reference_train_test_indices,
    split_off_valid,
    subsample,
    subsample_indices,
)

CHOICES = ["park", "coloring book", "garden center", "math problem", "gravity"]


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def write_cot(folder, split, chunks):
    os.makedirs(folder, exist_ok=True)
    for index, chunk in enumerate(chunks):
        with open(os.path.join(folder, f"{split}_CoT_{index}.json"), "w") as f:
            json.dump(chunk, f)


def cqa_row(i):
    return {
        "id": f"q{i}",
        "question": f"Question {i}?",
        "choices": CHOICES,
        "answer": CHOICES[i % 5],
        "abstractive_explanation": f"human {i}",
        "extractive_explanation": "x",
    }


def cqa_completion(i, answer_index=None):
    answer_index = i % 5 if answer_index is None else answer_index
    letter = "abcde"[answer_index]
    return (
        f"Reason {i}. So the answer is ({letter}) {CHOICES[answer_index]}.\n\n"
        "Q: Next?\nAnswer Choices:\n(a) x\nA: Because"
    )


def make_cqa(root, num_train=20, num_test=4, bad_train=(), wrong_train=()):
    folder = root / "cqa"
    write_jsonl(str(folder / "cqa_train.json"), [cqa_row(i) for i in range(num_train)])
    write_jsonl(str(folder / "cqa_test.json"), [cqa_row(100 + i) for i in range(num_test)])
    train = []
    for i in range(num_train):
        if i in bad_train:
            train.append(f"Reason {i}. So the answer is nothing.")
        elif i in wrong_train:
            train.append(cqa_completion(i, (i + 1) % 5))
        else:
            train.append(cqa_completion(i))
    # Two files as in the paper (1000 a file there); concatenated in order.
    write_cot(str(folder / "llm"), "train", [train[:7], train[7:]])
    write_cot(str(folder / "llm"), "test", [[cqa_completion(100 + i) for i in range(num_test)]])
    return str(root)


def test_cqa_paper_layout_formats_input_like_the_reference(tmp_path):
    data_dir = make_cqa(tmp_path)
    loaded = load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))
    test = loaded.splits["test"]
    assert test[0] == Example(
        id="q100",
        input=(
            "Question 100?\nAnswer Choices:\n(a) park\n(b) coloring book\n(c) garden center"
            "\n(d) math problem\n(e) gravity"
        ),
        label="park",
        rationale="Reason 100.",
        llm_label="park",
    )
    assert [len(loaded.splits[s]) for s in ("train", "valid", "test")] == [18, 2, 4]


def test_valid_split_is_the_reference_train_test_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    data_dir = make_cqa(tmp_path, num_train=37)
    loaded = load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))
    reference = datasets.Dataset.from_dict({"id": [f"q{i}" for i in range(37)]})
    reference = reference.train_test_split(test_size=0.1, seed=0)
    assert [e.id for e in loaded.splits["train"]] == reference["train"]["id"]
    assert [e.id for e in loaded.splits["valid"]] == reference["test"]["id"]


def test_subsampling_is_the_reference_train_test_split():
    datasets = pytest.importorskip("datasets")
    ids = [str(i) for i in range(101)]
    reference = datasets.Dataset.from_dict({"id": ids})
    for fraction in (0.125, 0.25, 0.5):
        for seed in (0, 3):
            expected = reference.train_test_split(test_size=1.0 - fraction, seed=seed)["train"]
            assert subsample(ids, fraction, seed) == expected["id"]
    assert list(subsample_indices(5, 1.0, 0)) == [0, 1, 2, 3, 4]


def test_subsample_and_valid_split_helpers():
    train, valid = split_off_valid(list(range(50)), 0.1, 0)
    assert len(valid) == math.ceil(0.1 * 50) and sorted(train + valid) == list(range(50))
    with pytest.raises(ValueError, match="cannot split"):
        reference_train_test_indices(1, 0.1, 0)
    with pytest.raises(ValueError, match="fraction"):
        subsample_indices(10, 0.0, 0)


def test_subsampling_gives_the_same_examples_to_every_method(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=80)
    selections = []
    for label_type in ("gt", "llm"):
        for rationale_source in ("teacher", "human"):
            spec = DatasetSpec(
                dataset="cqa",
                data_dir=data_dir,
                label_type=label_type,
                rationale_source=rationale_source,
                train_fraction=0.25,
                subsample_seed=1,
            )
            loaded = load_dataset_splits(spec)
            selections.append({s: [e.id for e in loaded.splits[s]] for s in loaded.splits})
    assert all(selection == selections[0] for selection in selections)
    assert len(selections[0]["train"]) + len(selections[0]["valid"]) == 20


def test_valid_can_stay_fixed_across_fractions(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=80)
    valid_ids = []
    for fraction in (0.25, 1.0):
        spec = DatasetSpec(
            dataset="cqa",
            data_dir=data_dir,
            train_fraction=fraction,
            subsample_before_valid_split=False,
        )
        valid_ids.append([e.id for e in load_dataset_splits(spec).splits["valid"]])
    assert valid_ids[0] == valid_ids[1] and len(valid_ids[0]) == 8


def test_teacher_files_are_concatenated_in_numeric_order(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=12)
    llm = tmp_path / "cqa" / "llm"
    for name in os.listdir(llm):
        if name.startswith("train_"):
            os.remove(llm / name)
    write_cot(str(llm), "train", [[cqa_completion(i)] for i in range(12)])  # _0 .. _11
    loaded = load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir, valid_fraction=0.1))
    for example in loaded.splits["train"] + loaded.splits["valid"]:
        assert example.rationale == f"Reason {example.id[1:]}."


def test_unparseable_train_examples_are_dropped_and_counted(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=20, bad_train=(1, 2, 3), wrong_train=(4,))
    loaded = load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))
    train_report = loaded.report.splits["train"]
    valid_report = loaded.report.splits["valid"]
    assert train_report.parse_failures + valid_report.parse_failures == 3
    assert train_report.dropped_unparseable == train_report.parse_failures
    assert all(e.parse_error is None and e.rationale for e in loaded.splits["train"])
    # valid never loses examples; its failures stay, flagged, with no rationale.
    assert len(loaded.splits["valid"]) == 2
    assert all((e.rationale is None) == (e.parse_error is not None) for e in loaded.splits["valid"])
    total = train_report.num_teacher_outputs + valid_report.num_teacher_outputs
    correct = train_report.teacher_correct + valid_report.teacher_correct
    assert (total, correct) == (20, 16)
    assert "no '(x)' choice letter" in loaded.report.format()


def test_unparseable_examples_can_be_kept_flagged(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=20, bad_train=tuple(range(20)))
    spec = DatasetSpec(dataset="cqa", data_dir=data_dir, drop_unparseable=False, label_type="llm")
    loaded = load_dataset_splits(spec)
    train = loaded.splits["train"]
    assert len(train) == 18
    assert all(e.rationale is None and e.llm_label is None for e in train)
    assert all(e.parse_error == "no '(x)' choice letter after the cue" for e in train)
    # No teacher label to train on: the human label stays, and the report says so.
    assert loaded.report.splits["train"].label_fallbacks_to_gt == 18
    assert all(e.label in CHOICES for e in train)


def test_llm_label_type_replaces_only_train_labels(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=20, wrong_train=tuple(range(20)))
    loaded = load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir, label_type="llm"))
    assert all(e.label == e.llm_label for e in loaded.splits["train"])
    assert all(e.label != e.llm_label for e in loaded.splits["valid"])
    assert loaded.report.splits["train"].teacher_accuracy == 0.0
    assert loaded.report.splits["test"].teacher_accuracy == 1.0


def test_human_rationales_replace_teacher_rationales_on_request(tmp_path):
    data_dir = make_cqa(tmp_path)
    spec = DatasetSpec(dataset="cqa", data_dir=data_dir, rationale_source="human")
    example = load_dataset_splits(spec).splits["test"][0]
    assert example.rationale == "human 100" and example.llm_label == "park"


def test_teacher_count_mismatch_names_files_and_counts(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=20)
    write_cot(str(tmp_path / "cqa" / "llm"), "train", [[cqa_completion(0)] * 7])
    os.remove(tmp_path / "cqa" / "llm" / "train_CoT_1.json")
    with pytest.raises(DataFormatError, match=r"7 teacher completions in train_CoT_0.json but 20"):
        load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))


def test_gap_in_teacher_file_numbers_is_an_error(tmp_path):
    data_dir = make_cqa(tmp_path)
    os.rename(
        tmp_path / "cqa" / "llm" / "train_CoT_1.json", tmp_path / "cqa" / "llm" / "train_CoT_2.json"
    )
    with pytest.raises(DataFormatError, match=r"numbered 0..1, found \[0, 2\]"):
        load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))


def test_malformed_json_line_names_file_and_line(tmp_path):
    data_dir = make_cqa(tmp_path)
    path = tmp_path / "cqa" / "cqa_test.json"
    rows = path.read_text().splitlines()
    rows[2] = rows[2][:-5]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataFormatError, match=r"cqa_test.json, line 3: malformed JSON") as info:
        load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))
    assert info.value.line == 3 and info.value.path.endswith("cqa_test.json")


def test_missing_field_names_file_line_and_field(tmp_path):
    data_dir = make_cqa(tmp_path)
    row = cqa_row(1)
    del row["answer"]
    write_jsonl(str(tmp_path / "cqa" / "cqa_test.json"), [cqa_row(0), row, cqa_row(2), cqa_row(3)])
    with pytest.raises(DataFormatError, match=r"line 2, field 'answer': missing field"):
        load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))


def test_missing_split_file_is_an_error(tmp_path):
    data_dir = make_cqa(tmp_path)
    os.remove(tmp_path / "cqa" / "cqa_test.json")
    with pytest.raises(DataFormatError, match="missing test split file"):
        load_dataset_splits(DatasetSpec(dataset="cqa", data_dir=data_dir))


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(UnknownDatasetError, match="known datasets: cqa, svamp, esnli, anli1"):
        DatasetSpec(dataset="mnli", data_dir="/nowhere")
    with pytest.raises(UnknownDatasetError, match="known sources"):
        DatasetSpec(dataset="cqa", source="csv")
    assert "gsm8k" in KNOWN_DATASETS


def nli_row(i, label):
    return {
        "premise": f"P{i}.",
        "hypothesis": f"H{i}.",
        "label": label,
        "explanation_1": f"E{i}",
        "explanation_2": "",
        "explanation_3": "",
    }


def make_esnli(root, labels=(0, 1, 2, 1)):
    folder = root / "esnli"
    for split in ("train", "valid", "test"):
        write_jsonl(
            str(folder / f"esnli_{split}.json"),
            [nli_row(i, label) for i, label in enumerate(labels)],
        )
        names = ["entailment", "neutral", "contradiction"]
        write_cot(
            str(folder / "llm"),
            split,
            [
                [
                    f"Because {i}.\nAnswer: {names[label % 3]}\n\nPremise: next"
                    for i, label in enumerate(labels)
                ]
            ],
        )
    return str(root)


def test_esnli_joins_premise_and_hypothesis_with_eos_and_keeps_its_valid_split(tmp_path):
    data_dir = make_esnli(tmp_path)
    loaded = load_dataset_splits(DatasetSpec(dataset="esnli", data_dir=data_dir))
    assert [len(loaded.splits[s]) for s in ("train", "valid", "test")] == [4, 4, 4]
    first = loaded.splits["valid"][1]
    assert (first.input, first.label, first.rationale) == ("P1.</s>H1.", "neutral", "Because 1.")
    assert loaded.report.splits["valid"].teacher_accuracy == 1.0


def test_nli_label_outside_the_set_names_file_line_and_field(tmp_path):
    data_dir = make_esnli(tmp_path, labels=(0, 1, 3))
    with pytest.raises(DataFormatError, match=r"esnli_train.json, line 3, field 'label'"):
        load_dataset_splits(DatasetSpec(dataset="esnli", data_dir=data_dir))


def test_anli_uses_uid_and_reason(tmp_path):
    folder = tmp_path / "anli1"
    for split in ("train", "valid", "test"):
        write_jsonl(
            str(folder / f"anli1_{split}.json"),
            [
                {"uid": f"u{i}", "premise": "P", "hypothesis": "H", "label": 2, "reason": "R"}
                for i in range(3)
            ],
        )
    write_cot(str(folder / "llm"), "train", [["No. So the answer is contradiction."] * 3])
    loaded = load_dataset_splits(DatasetSpec(dataset="anli1", data_dir=str(tmp_path)))
    train = loaded.splits["train"]
    assert [e.id for e in train] == ["u0", "u1", "u2"]
    assert train[0].label == "contradiction" and train[0].llm_label == "contradiction"
    assert loaded.splits["test"][0].rationale is None  # no teacher file for test
    assert loaded.report.splits["test"].num_teacher_outputs == 0
    human = load_dataset_splits(
        DatasetSpec(dataset="anli1", data_dir=str(tmp_path), rationale_source="human")
    )
    assert human.splits["test"][0].rationale == "R"


def make_svamp(root, n=10):
    folder = root / "svamp"
    rows = [
        {"input": f"Luke has {i} and {i + 1}\nHow many?", "label": f"( {i}.0 + {i + 1}.0 )"}
        for i in range(n)
    ]
    write_jsonl(str(folder / "svamp_train.json"), rows)
    write_jsonl(str(folder / "svamp_test.json"), rows[:2])
    completions = [
        f"{i} + {i + 1} = {2 * i + 1}. The answer is ({i} + {i + 1}).\n\nQ: x" for i in range(n)
    ]
    completions[0] = "The answer is (1 + 1)."  # wrong value
    completions[1] = "I do not know.\n\nQ: x"  # unparseable
    write_cot(str(folder / "llm"), "train", [completions])
    write_cot(str(folder / "llm"), "test", [completions[:2]])
    return str(root)


def test_svamp_teacher_accuracy_compares_equation_values(tmp_path):
    loaded = load_dataset_splits(DatasetSpec(dataset="svamp", data_dir=make_svamp(tmp_path)))
    test = loaded.report.splits["test"]
    assert (test.num_teacher_outputs, test.teacher_correct, test.parse_failures) == (2, 0, 1)
    train, valid = loaded.report.splits["train"], loaded.report.splits["valid"]
    assert train.teacher_correct + valid.teacher_correct == 8  # "(i + i+1)" == "( i.0 + i+1.0 )"
    assert [e.id for e in loaded.splits["test"]] == ["svamp-test-0", "svamp-test-1"]


def test_human_rationales_requested_where_there_are_none(tmp_path):
    spec = DatasetSpec(dataset="svamp", data_dir=make_svamp(tmp_path), rationale_source="human")
    with pytest.raises(ValueError, match="no human rationales"):
        load_dataset_splits(spec)


def test_llm_labels_without_teacher_outputs_is_an_error(tmp_path):
    data_dir = make_svamp(tmp_path)
    for name in os.listdir(tmp_path / "svamp" / "llm"):
        os.remove(tmp_path / "svamp" / "llm" / name)
    with pytest.raises(DataFormatError, match="needs teacher outputs for the train split"):
        load_dataset_splits(DatasetSpec(dataset="svamp", data_dir=data_dir, label_type="llm"))


def test_gsm8k_label_is_the_number_after_hashes_and_solution_is_a_human_rationale(tmp_path):
    folder = tmp_path / "gsm8k"
    rows = [
        {"question": f"Q{i}?", "answer": f"She sold 48/2 = <<48/2=24>>24 clips.\n#### 1,00{i}"}
        for i in range(10)
    ]
    write_jsonl(str(folder / "gsm8k_train.json"), rows)
    write_jsonl(str(folder / "gsm8k_test.json"), rows[:2])
    write_cot(str(folder / "llm"), "test", [["24 clips. The answer is 1,000.", "x"]])
    loaded = load_dataset_splits(DatasetSpec(dataset="gsm8k", data_dir=str(tmp_path)))
    first = loaded.splits["test"][0]
    assert (first.input, first.label, first.llm_label) == ("Q0?", "1000", "1000")
    assert first.rationale == "24 clips."
    human = load_dataset_splits(
        DatasetSpec(dataset="gsm8k", data_dir=str(tmp_path), rationale_source="human")
    )
    assert human.splits["test"][1].rationale == "She sold 48/2 = 24 clips."
    assert human.report.splits["test"].teacher_correct == 1


def test_gsm8k_answer_without_hashes_is_a_field_error(tmp_path):
    folder = tmp_path / "gsm8k"
    write_jsonl(str(folder / "gsm8k_train.json"), [{"question": "Q", "answer": "42"}])
    write_jsonl(str(folder / "gsm8k_test.json"), [{"question": "Q", "answer": "#### 4"}])
    with pytest.raises(DataFormatError, match=r"line 1, field 'answer'"):
        load_dataset_splits(DatasetSpec(dataset="gsm8k", data_dir=str(tmp_path)))


def test_jsonl_source_for_the_users_own_data(tmp_path):
    rows = [
        {
            "id": f"r{i}",
            "input": f"in {i}",
            "label": "yes",
            "rationale": f"why {i}",
            "llm_label": "yes" if i % 2 else "no",
        }
        for i in range(6)
    ]
    rows[5] = {"input": "in 5", "label": 7}  # no rationale; numeric label
    write_jsonl(str(tmp_path / "train.jsonl"), rows)
    write_jsonl(str(tmp_path / "valid.jsonl"), rows[:2])
    write_jsonl(
        str(tmp_path / "test.jsonl"),
        [{"input": "t", "label": "no", "completion": "Because. The answer is no."}],
    )
    spec = DatasetSpec(dataset="jsonl", source="jsonl", data_dir=str(tmp_path))
    loaded = load_dataset_splits(spec)
    assert [e.id for e in loaded.splits["train"]] == ["r0", "r1", "r2", "r3", "r4"]
    assert loaded.report.splits["train"].dropped_unparseable == 1  # the row without rationale
    assert len(loaded.splits["valid"]) == 2  # valid.jsonl used, not carved
    assert loaded.splits["test"][0] == Example("test-0", "t", "no", "Because.", "no")
    kept = load_dataset_splits(
        DatasetSpec(dataset="jsonl", source="jsonl", data_dir=str(tmp_path), drop_unparseable=False)
    )
    assert kept.splits["train"][5].label == "7" and kept.splits["train"][5].rationale is None


def test_rationales_without_teacher_labels_report_no_teacher_accuracy(tmp_path):
    """Human-written rationales (or a teacher that gave no labels) have nothing to score:
    the report shows '-' rather than a teacher accuracy of 0%."""
    rows = [{"input": f"in {i}", "label": "yes", "rationale": f"why {i}"} for i in range(4)]
    for split in ("train", "valid", "test"):
        write_jsonl(str(tmp_path / f"{split}.jsonl"), rows)
    spec = DatasetSpec(dataset="jsonl", source="jsonl", data_dir=str(tmp_path), label_type="gt")
    report = load_dataset_splits(spec).report
    assert report.splits["train"].num_teacher_outputs == 4
    assert report.splits["train"].teacher_accuracy is None
    assert report.splits["train"].teacher_accuracy_parsed is None
    train_line = next(line for line in report.format().splitlines() if line.startswith("train"))
    assert "0.00%" not in train_line and " - " in train_line


def test_jsonl_source_errors_name_the_field(tmp_path):
    write_jsonl(str(tmp_path / "train.jsonl"), [{"input": "a", "label": "b"}, {"input": "c"}])
    write_jsonl(str(tmp_path / "test.jsonl"), [{"input": "a", "label": "b"}])
    spec = DatasetSpec(dataset="jsonl", source="jsonl", data_dir=str(tmp_path))
    with pytest.raises(DataFormatError, match=r"train.jsonl, line 2, field 'label'"):
        load_dataset_splits(spec)


def test_rationale_dir_jsonl_joins_by_id(tmp_path):
    data_dir = make_cqa(tmp_path, num_train=10)
    rationale_dir = tmp_path / "teacher"
    write_jsonl(
        str(rationale_dir / "test.jsonl"),
        [
            {"id": "q101", "completion": cqa_completion(101)},
            {"id": "q100", "rationale": "Parsed already.", "llm_label": "park"},
        ],
    )
    write_jsonl(
        str(rationale_dir / "train.jsonl"),
        [{"id": f"q{i}", "rationale": "r", "llm_label": "park"} for i in range(10)],
    )
    spec = DatasetSpec(dataset="cqa", data_dir=data_dir, rationale_dir=str(rationale_dir))
    test = load_dataset_splits(spec).splits["test"]
    assert (test[0].rationale, test[1].rationale) == ("Parsed already.", "Reason 101.")
    assert test[2].parse_error == "no teacher output for this example"


def test_spec_from_trainer_config():
    import pathlib

    from sbsd_jax.experiments.config_files import load_config_file
    from sbsd_jax.settings import from_config

    config = load_config_file(pathlib.Path(__file__).parents[1] / "configs" / "base.py")
    config.update(
        {
            "dataset": "svamp",
            "data_source": "paper",
            "data_dir": "/d",
            "label_type": "llm",
            "train_fraction": 0.5,
            "subsample_seed": 2,
            "drop_unparseable": False,
            "method": "cot",
        }
    )
    spec = from_config.dataset_spec(config)
    assert (spec.dataset, spec.source, spec.data_dir, spec.label_type) == (
        "svamp",
        "paper",
        "/d",
        "llm",
    )
    assert (spec.train_fraction, spec.subsample_seed, spec.drop_unparseable) == (0.5, 2, False)


def test_inspect_cli_prints_counts_failures_and_accuracy(tmp_path, capsys):
    from sbsd_jax.data.inspect import main

    data_dir = make_svamp(tmp_path)
    assert main([f"--data_dir={data_dir}", "--dataset=svamp", "--show=1"]) == 0
    out = capsys.readouterr().out
    assert "test          2        2        1        0       0.00%" in out
    assert "no answer cue 'The answer is'" in out


def test_data_format_error_survives_pickling_for_worker_processes():
    import pickle

    error = pickle.loads(pickle.dumps(DataFormatError("bad", path="f.json", line=3, field="x")))
    assert (str(error), error.path, error.line, error.field) == (
        "file f.json, line 3, field 'x': bad",
        "f.json",
        3,
        "x",
    )
