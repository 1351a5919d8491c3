"""Per-example predictions as JSONL, written next to metrics.jsonl for inspection."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Iterable


@dataclasses.dataclass(frozen=True)
class PredictionRecord:
    """One evaluated example. rationale: the decoded rationale (cot, or the explain task when
    rationale decoding is on), None otherwise."""

    id: str
    input: str
    label: str
    prediction: str
    correct: bool
    rationale: str | None = None


def predictions_path(workdir: str | os.PathLike[str], split: str, step: int) -> pathlib.Path:
    """Where the predictions of one evaluation go: <workdir>/predictions/<split>_step_<n>.jsonl."""
    return pathlib.Path(workdir) / "predictions" / f"{split}_step_{step}.jsonl"


def write_predictions(
    path: str | os.PathLike[str], records: Iterable[PredictionRecord]
) -> pathlib.Path:
    """Writes the records atomically (temp file + rename) and returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n")
    os.replace(temporary, path)
    return path


def read_predictions(path: str | os.PathLike[str]) -> list[PredictionRecord]:
    with open(path, encoding="utf-8") as handle:
        return [PredictionRecord(**json.loads(line)) for line in handle if line.strip()]
