"""Hugging Face `datasets` source: a hub name (when online) or a local copy, either a
`save_to_disk` folder or a folder of per-split JSON/JSONL files, converted with the same
per-dataset rules as the paper layout. Teacher outputs come from `rationale_dir`."""

from __future__ import annotations

import os
from typing import Any

from sbsd_jax.data.examples import SPLITS, DataFormatError
from sbsd_jax.data.records import RawExample, Where, convert_record
from sbsd_jax.data.teacher_outputs import SourceData, load_teacher_outputs

# Hub name (not checked online from here: no network), config, and for each of our splits
# the source split names to try, in order.
HF_DEFAULTS: dict[str, tuple[str | None, str | None, dict[str, tuple[str, ...]]]] = {
    # cos_e v1.11 has no test split: its validation split is the paper's test set.
    "cqa": (
        "Salesforce/cos_e",
        "v1.11",
        {"train": ("train",), "valid": (), "test": ("validation", "test")},
    ),
    "esnli": ("esnli", None, {}),
    "anli1": (
        "facebook/anli",
        None,
        {
            "train": ("train_r1", "train"),
            "valid": ("dev_r1", "validation", "dev"),
            "test": ("test_r1", "test"),
        },
    ),
    "gsm8k": ("openai/gsm8k", "main", {}),
    "svamp": (None, None, {}),
    "synthetic": (None, None, {}),
    "synthetic_world": (None, None, {}),
    "jsonl": (None, None, {}),
}
_GENERIC_SPLIT_NAMES = {
    "train": ("train",),
    "valid": ("validation", "valid", "dev"),
    "test": ("test",),
}


def _load_local_json_folder(path: str) -> Any:
    import datasets

    data_files = {}
    for name in sorted(os.listdir(path)):
        stem, extension = os.path.splitext(name)
        if extension in (".json", ".jsonl"):
            data_files[stem] = os.path.join(path, name)
    if not data_files:
        raise DataFormatError(
            "neither a save_to_disk folder (dataset_dict.json) nor per-split .json/.jsonl files",
            path=path,
        )
    return datasets.load_dataset("json", data_files=data_files)


def _find_split(candidates: tuple[str, ...], available: list[str]) -> str | None:
    """The first candidate present, also as a suffix ('cqa_train' in a local JSON folder)."""
    for candidate in candidates:
        for name in available:
            if name == candidate or name.endswith("_" + candidate):
                return name
    return None


def load_hf_dataset_dict(name: str, config: str | None) -> Any:
    """A DatasetDict from a local save_to_disk folder, a local JSON folder, or the hub."""
    import datasets

    if os.path.isdir(name):
        if os.path.isfile(os.path.join(name, "dataset_dict.json")):
            return datasets.load_from_disk(name)
        if os.path.isfile(os.path.join(name, "state.json")):
            raise DataFormatError(
                "a single saved Dataset; save a DatasetDict with train/test splits instead",
                path=name,
            )
        return _load_local_json_folder(name)
    try:
        return datasets.load_dataset(name, config) if config else datasets.load_dataset(name)
    except Exception as error:  # offline, unknown name, ...: say which and how to fix
        raise DataFormatError(
            f"could not load Hugging Face dataset {name!r} (config {config!r}): {error}. "
            "Offline? Point hf_name at a local save_to_disk copy.",
            path=name,
        ) from error


def load_hf(
    dataset: str,
    *,
    hf_name: str | None = None,
    hf_config: str | None = None,
    rationale_dir: str | None = None,
    load_teacher: bool = True,
) -> SourceData:
    default_name, default_config, split_names = HF_DEFAULTS[dataset]
    name = hf_name or default_name
    if name is None:
        raise DataFormatError(
            f"dataset {dataset!r} has no hub default; set hf_name to a local copy"
        )
    config = (
        hf_config
        if hf_config is not None
        else (None if hf_name and os.path.isdir(hf_name) else default_config)
    )
    dataset_dict = load_hf_dataset_dict(name, config)
    available = list(dataset_dict.keys())
    data = SourceData(splits={})
    for split in SPLITS:
        candidates = split_names.get(split, _GENERIC_SPLIT_NAMES[split])
        source_split = _find_split(candidates, available)
        if source_split is None:
            if split == "valid":
                continue
            raise DataFormatError(
                f"no {split} split (looked for {', '.join(candidates)}; "
                f"has {', '.join(available)})",
                path=name,
            )
        location = f"{name}[{source_split}]"
        examples: list[RawExample] = []
        for index, row in enumerate(dataset_dict[source_split]):
            examples.append(
                convert_record(
                    dataset,
                    row,
                    default_id=f"{dataset}-{split}-{index}",
                    where=Where(location, index + 1),
                )
            )
        data.splits[split] = examples
        data.origin[split] = location
    if load_teacher and rationale_dir is not None:
        for split, examples in data.splits.items():
            outputs = load_teacher_outputs(dataset, rationale_dir, split, examples)
            if outputs is not None:
                data.teacher[split] = outputs
    return data
