"""TFDS source: prepared TFDS datasets under a `data_dir` (esnli, anli/r1, gsm8k), read with
`tfds.load(..., download=False)` so nothing is ever fetched, converted with the same
per-dataset rules as the paper layout. Teacher outputs come from `rationale_dir`.

TFDS stores examples in its own (hashed) order, not the order of the original files, so join
teacher outputs by id ({split}.jsonl with 'id' or 'input'), or produce them in TFDS order.
"""

from __future__ import annotations

from sbsd_jax.data.examples import SPLITS, DataFormatError
from sbsd_jax.data.records import RawExample, Where, convert_record
from sbsd_jax.data.teacher_outputs import SourceData, load_teacher_outputs
from sbsd_jax.data.tensorflow_runtime import import_tensorflow

# TFDS name and, for each of our splits, the TFDS split name ('' = the dataset has none).
TFDS_DEFAULTS: dict[str, tuple[str, dict[str, str]]] = {
    "esnli": ("esnli", {"train": "train", "valid": "validation", "test": "test"}),
    "anli1": ("anli/r1", {"train": "train", "valid": "validation", "test": "test"}),
    "gsm8k": ("gsm8k", {"train": "train", "valid": "", "test": "test"}),
}


def load_tfds(
    dataset: str,
    *,
    data_dir: str | None,
    tfds_name: str | None = None,
    rationale_dir: str | None = None,
    load_teacher: bool = True,
) -> SourceData:
    if dataset not in TFDS_DEFAULTS and tfds_name is None:
        raise DataFormatError(
            f"no TFDS default for dataset {dataset!r} (TFDS has {', '.join(TFDS_DEFAULTS)}); "
            "set tfds_name"
        )
    import_tensorflow()
    import tensorflow_datasets as tfds

    default_name, split_names = TFDS_DEFAULTS.get(
        dataset, (tfds_name, {"train": "train", "valid": "validation", "test": "test"})
    )
    name = tfds_name or default_name
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # DatasetNotFoundError: an unknown name, or nothing prepared
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise DataFormatError(
            f"no TFDS dataset {name!r} here ({type(error).__name__}: {first_line}); "
            "set tfds_name to a prepared builder, or prepare it with `tfds build`",
            path=str(data_dir),
        ) from error
    prepared = set(builder.info.splits.keys())  # empty under tfds.testing.mock_data
    data = SourceData(splits={})
    for split in SPLITS:
        source_split = split_names.get(split, "")
        if not source_split or (prepared and source_split not in prepared):
            if split == "valid":
                continue
            raise DataFormatError(
                f"TFDS dataset {name!r} has no {source_split or split!r} split "
                f"(prepared: {', '.join(sorted(prepared)) or 'none'})",
                path=str(data_dir),
            )
        try:
            rows = tfds.as_numpy(
                tfds.load(name, split=source_split, data_dir=data_dir, download=False)
            )
        except Exception as error:  # not prepared under data_dir, wrong version, ...
            raise DataFormatError(
                f"could not read TFDS {name!r} split {source_split!r}: {error}",
                path=str(data_dir),
            ) from error
        location = f"tfds:{name}[{source_split}]"
        examples: list[RawExample] = []
        for index, row in enumerate(rows):
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
