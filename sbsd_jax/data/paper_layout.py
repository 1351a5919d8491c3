"""Reader for the paper authors' `datasets/` folder layout:

{data_dir}/{name}/{name}_{split}.json      JSON lines, one example a line (split: train, test,
                                           and valid for e-SNLI/ANLI)
{data_dir}/{name}/llm/{split}_CoT_{i}.json JSON lists of raw teacher completions, concatenated
                                           in i order, paired with the examples by position
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from sbsd_jax.data.examples import SPLITS, DataFormatError
from sbsd_jax.data.records import (
    RawExample,
    Where,
    check_split_examples,
    convert_record,
    read_jsonl_rows,
)
from sbsd_jax.data.teacher_outputs import SourceData, load_teacher_outputs


def split_path(data_dir: str, dataset: str, split: str) -> str:
    return os.path.join(data_dir, dataset, f"{dataset}_{split}.json")


def write_split(
    data_dir: str,
    dataset: str,
    split: str,
    records: Sequence[Mapping],
    completions: Sequence[str],
    completions_per_file: int = 1000,
) -> None:
    """The writer's side of this layout (the synthetic tasks): one split's JSON lines and its
    teacher completions in files of `completions_per_file` (the paper's hold 1000 each)."""
    llm_folder = os.path.join(data_dir, dataset, "llm")
    os.makedirs(llm_folder, exist_ok=True)
    with open(split_path(data_dir, dataset, split), "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    for file_index, start in enumerate(range(0, len(completions), completions_per_file)):
        path = os.path.join(llm_folder, f"{split}_CoT_{file_index}.json")
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(list(completions[start : start + completions_per_file]), handle)


def read_split_file(dataset: str, path: str, split: str) -> list[RawExample]:
    """All examples of one JSON-lines split file; DataFormatError names file, line and field."""
    rows = read_jsonl_rows(path)
    examples = [
        convert_record(
            dataset, row, default_id=f"{dataset}-{split}-{index}", where=Where(path, line_number)
        )
        for index, (line_number, row) in enumerate(rows)
    ]
    check_split_examples(path, examples, [line_number for line_number, _ in rows])
    return examples


def load_paper_layout(
    dataset: str, data_dir: str, *, load_teacher: bool = True, rationale_dir: str | None = None
) -> SourceData:
    """Examples of every split present (train and test required) plus the teacher outputs
    found in `rationale_dir` (default {data_dir}/{dataset}/llm)."""
    folder = os.path.join(data_dir, dataset)
    if not os.path.isdir(folder):
        raise DataFormatError(f"no folder for dataset {dataset!r}", path=folder)
    data = SourceData(splits={})
    for split in SPLITS:
        path = split_path(data_dir, dataset, split)
        if not os.path.isfile(path):
            if split != "valid":
                raise DataFormatError(f"missing {split} split file", path=path)
            continue
        data.splits[split] = read_split_file(dataset, path, split)
        data.origin[split] = path
    if load_teacher:
        llm_dir = rationale_dir or os.path.join(folder, "llm")
        for split, examples in data.splits.items():
            outputs = load_teacher_outputs(dataset, llm_dir, split, examples)
            if outputs is not None:
                data.teacher[split] = outputs
    return data
