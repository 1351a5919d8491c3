"""Per-example predictions as JSONL, written next to metrics.jsonl for inspection.

Paths go through `etils.epath`: a local folder or a URL (gs://...) like the rest of a workdir.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

from etils import epath

from sbsd_jax.runtime.run_storage import is_url


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


def predictions_path(workdir: str | os.PathLike[str], split: str, step: int) -> epath.Path:
    """Where the predictions of one evaluation go: <workdir>/predictions/<split>_step_<n>.jsonl."""
    return epath.Path(workdir) / "predictions" / f"{split}_step_{step}.jsonl"


def write_predictions(
    path: str | os.PathLike[str], records: Iterable[PredictionRecord]
) -> epath.Path:
    """Writes the records atomically and returns the path: locally a temp file + rename; on an
    object store (gs://...) straight to the object: its upload is atomic, and a rename there
    is a second copy of the file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remote = is_url(path)
    temporary = path if remote else path.with_name(path.name + ".tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(dataclasses.asdict(record), ensure_ascii=False) + "\n")
    if not remote:
        os.replace(temporary, path)
    return path


def read_predictions(path: str | os.PathLike[str]) -> list[PredictionRecord]:
    with epath.Path(path).open("r", encoding="utf-8") as handle:
        return [PredictionRecord(**json.loads(line)) for line in handle if line.strip()]
