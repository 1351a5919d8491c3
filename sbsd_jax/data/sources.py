"""`load_dataset_splits(spec)`: read any source, attach teacher outputs, carve valid, subsample
train, apply the label type, and report what happened, in the reference's order:

  1. read train/test (and valid where the dataset has one) and the teacher outputs;
  2. subsample train (`train_test_split(test_size=1 - fraction, seed)`), then carve valid from
     it when there is no valid split (`test_size=0.1, seed=0`) -- or the other way round with
     spec.subsample_before_valid_split=False, which keeps valid fixed across fractions;
  3. count parse failures and teacher accuracy per split;
  4. drop unparseable train examples (spec.drop_unparseable) -- valid and test never lose
     examples, their metrics use human labels; kept ones carry rationale=None and parse_error;
  5. label_type='llm': train labels become the teacher's labels (only train, as the reference).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from sbsd_jax.data.examples import (
    KNOWN_DATASETS,
    DataFormatError,
    DatasetSpec,
    Example,
    UnknownDatasetError,
)
from sbsd_jax.data.records import RawExample
from sbsd_jax.data.report import DataReport, SplitReport, count_reasons, labels_match
from sbsd_jax.data.subsample import split_off_valid, subsample
from sbsd_jax.data.teacher_outputs import SourceData, TeacherOutput

NO_HUMAN_RATIONALE = "no human rationale for this example"


@dataclasses.dataclass
class LoadedDataset:
    splits: dict[str, list[Example]]
    report: DataReport
    spec: DatasetSpec


def read_source(spec: DatasetSpec) -> SourceData:
    """The raw examples and teacher outputs of `spec`'s source, before splitting/subsampling."""
    if spec.dataset not in KNOWN_DATASETS:
        raise UnknownDatasetError(
            f"unknown dataset {spec.dataset!r}; known datasets: {', '.join(KNOWN_DATASETS)}"
        )
    if spec.source in ("paper", "jsonl") and not spec.data_dir:
        raise ValueError(f"source {spec.source!r} needs data_dir")
    if spec.source == "paper":
        from sbsd_jax.data.paper_layout import load_paper_layout

        return load_paper_layout(
            spec.dataset,
            spec.data_dir,
            load_teacher=spec.load_teacher,
            rationale_dir=spec.rationale_dir,
        )
    if spec.source == "jsonl":
        from sbsd_jax.data.jsonl_source import load_jsonl

        return load_jsonl(
            spec.data_dir,
            dataset=spec.dataset,
            load_teacher=spec.load_teacher,
            rationale_dir=spec.rationale_dir,
        )
    if spec.source == "hf":
        from sbsd_jax.data.hf_source import load_hf

        return load_hf(
            spec.dataset,
            hf_name=spec.hf_name,
            hf_config=spec.hf_config,
            rationale_dir=spec.rationale_dir,
            load_teacher=spec.load_teacher,
        )
    if spec.source == "tfds":
        from sbsd_jax.data.tfds_source import load_tfds

        return load_tfds(
            spec.dataset,
            data_dir=spec.data_dir,
            tfds_name=spec.tfds_name,
            rationale_dir=spec.rationale_dir,
            load_teacher=spec.load_teacher,
        )
    if spec.source == "synthetic":
        if spec.data_dir:
            return _read_synthetic(spec, spec.data_dir)
        # No folder asked for: generate into a temporary one, read it, and leave nothing behind.
        with tempfile.TemporaryDirectory(prefix="sbsd_synthetic_") as folder:
            data = _read_synthetic(spec, folder)
        data.origin = {split: "generated (not kept: set config.data_dir)" for split in data.origin}
        return data
    raise UnknownDatasetError(f"unknown data source {spec.source!r}")


def _read_synthetic(spec: DatasetSpec, data_dir: str) -> SourceData:
    """The generated dataset in the paper's layout under `data_dir` (written unless there)."""
    from sbsd_jax.data import synthetic, synthetic_world
    from sbsd_jax.data.paper_layout import load_paper_layout

    writers = {
        "synthetic": synthetic.write_paper_layout,
        "synthetic_world": synthetic_world.write_paper_layout,
    }
    if spec.dataset not in writers:
        raise ValueError(
            f"source 'synthetic' only serves datasets {sorted(writers)}, not {spec.dataset!r}"
        )
    train_file = os.path.join(data_dir, spec.dataset, f"{spec.dataset}_train.json")
    if not os.path.isfile(train_file):
        writers[spec.dataset](data_dir)
    return load_paper_layout(
        spec.dataset, data_dir, load_teacher=spec.load_teacher, rationale_dir=spec.rationale_dir
    )


def _attach(
    raw: list[RawExample], teacher: list[TeacherOutput] | None, rationale_source: str
) -> list[Example]:
    examples = []
    for index, item in enumerate(raw):
        output = teacher[index] if teacher is not None else None
        llm_label = output.llm_label if output is not None else None
        if rationale_source == "human":
            rationale = item.human_rationale
            error = None if rationale is not None else NO_HUMAN_RATIONALE
        else:
            rationale = output.rationale if output is not None else None
            error = output.parse_error if output is not None else None
        examples.append(
            Example(
                id=item.id,
                input=item.input,
                label=item.label,
                rationale=rationale,
                llm_label=llm_label,
                parse_error=error,
            )
        )
    return examples


def _split_report(
    dataset: str, split: str, origin: str, examples: list[Example], has_teacher: bool
) -> SplitReport:
    report = SplitReport(split=split, origin=origin, num_examples=len(examples))
    failures = [e.parse_error for e in examples if e.parse_error is not None]
    report.parse_failures = len(failures)
    report.failure_reasons = count_reasons(failures)
    if has_teacher:
        report.num_teacher_outputs = len(examples)
        report.teacher_correct = sum(labels_match(dataset, e.llm_label, e.label) for e in examples)
        # A completion that could not be parsed still was a labelling attempt (it counts wrong).
        report.teacher_labels = any(
            e.llm_label is not None or e.parse_error is not None for e in examples
        )
    return report


def load_dataset_splits(spec: DatasetSpec) -> LoadedDataset:
    """Train/valid/test Examples for `spec` plus the report (see the module docstring)."""
    data = read_source(spec)
    if spec.rationale_source == "human" and not any(
        item.human_rationale for items in data.splits.values() for item in items
    ):
        raise ValueError(
            f"dataset {spec.dataset!r} from source {spec.source!r} has no human "
            "rationales; use rationale_source='teacher'"
        )
    if spec.label_type == "llm" and "train" not in data.teacher:
        raise DataFormatError(
            "label_type='llm' needs teacher outputs for the train split, found none",
            path=spec.rationale_dir or spec.data_dir,
        )
    splits = {
        split: _attach(raw, data.teacher.get(split), spec.rationale_source)
        for split, raw in data.splits.items()
    }
    origin = dict(data.origin)
    report = DataReport(spec.dataset, spec.source, spec.label_type, spec.train_fraction)

    train = splits["train"]
    carve_valid = "valid" not in splits
    if spec.subsample_before_valid_split:
        train = subsample(train, spec.train_fraction, spec.subsample_seed)
    if carve_valid:
        train, splits["valid"] = split_off_valid(train, spec.valid_fraction, spec.valid_seed)
        origin["valid"] = f"{spec.valid_fraction:.0%} of {origin['train']} (seed {spec.valid_seed})"
        report.notes.append(
            f"valid carved from train: train_test_split(test_size={spec.valid_fraction}, "
            f"seed={spec.valid_seed}) as the reference"
        )
    if not spec.subsample_before_valid_split:
        train = subsample(train, spec.train_fraction, spec.subsample_seed)
    if spec.train_fraction < 1.0:
        report.notes.append(
            f"train subsampled to {spec.train_fraction:g} with seed {spec.subsample_seed} "
            f"({'before' if spec.subsample_before_valid_split else 'after'} carving valid)"
        )
    splits["train"] = train

    ordered: dict[str, list[Example]] = {}
    for split in ("train", "valid", "test"):
        examples = splits[split]
        has_teacher = split in data.teacher or (
            split == "valid" and carve_valid and "train" in data.teacher
        )
        split_report = _split_report(spec.dataset, split, origin[split], examples, has_teacher)
        if split == "train":
            if spec.drop_unparseable:
                kept = [e for e in examples if e.parse_error is None]
                split_report.dropped_unparseable = len(examples) - len(kept)
                examples = kept
            if spec.label_type == "llm":
                relabelled = []
                for example in examples:
                    if example.llm_label is None:
                        split_report.label_fallbacks_to_gt += 1
                        relabelled.append(example)
                    else:
                        relabelled.append(dataclasses.replace(example, label=example.llm_label))
                examples = relabelled
            split_report.num_examples = len(examples)
        report.splits[split] = split_report
        ordered[split] = examples
    if spec.rationale_source == "human":
        report.notes.append("rationales are the dataset's human explanations, not the teacher's")
    return LoadedDataset(splits=ordered, report=report, spec=spec)
