"""Where a teacher run keeps its state, and the rules that make resuming safe.

  {out_dir}/{name}/llm/{split}_CoT_{i}.json        the paper layout (what training reads)
  {out_dir}/{name}/teacher/{split}/records.jsonl   append-only, one JSON line per result
  {out_dir}/{name}/teacher/{split}/manifest.json   the run's identity
  {out_dir}/{name}/teacher/{split}/.lock           flock held while a generator runs

Records are only ever appended by one writer (the lock), so a kill can at worst leave a
half-written last line, which `read_records(repair=True)` cuts off. Every file that readers see
whole (manifest, CoT lists, report) is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class RunMismatchError(ValueError):
    """The output folder holds a run with another teacher, prompt, sampling or input data."""


class RunLockedError(RuntimeError):
    """Another generator is writing the same split right now."""


class IncompleteRunError(RuntimeError):
    """The paper layout was asked for while some examples still have no completion."""


class RecordsFileError(ValueError):
    """records.jsonl is damaged somewhere other than a half-written last line."""


@dataclasses.dataclass(frozen=True)
class RunPaths:
    """Where one split's outputs live."""

    root: str  # {out_dir}/{name}
    split: str

    @property
    def llm_dir(self) -> str:
        return os.path.join(self.root, "llm")

    @property
    def run_dir(self) -> str:
        return os.path.join(self.root, "teacher", self.split)

    @property
    def records(self) -> str:
        return os.path.join(self.run_dir, "records.jsonl")

    @property
    def manifest(self) -> str:
        return os.path.join(self.run_dir, "manifest.json")

    @property
    def report(self) -> str:
        return os.path.join(self.run_dir, "report.json")

    @property
    def lock(self) -> str:
        return os.path.join(self.run_dir, ".lock")

    def cot_path(self, index: int) -> str:
        return os.path.join(self.llm_dir, f"{self.split}_CoT_{index}.json")

    def existing_cot_files(self) -> list[str]:
        if not os.path.isdir(self.llm_dir):
            return []
        prefix, suffix = f"{self.split}_CoT_", ".json"
        return sorted(
            os.path.join(self.llm_dir, name)
            for name in os.listdir(self.llm_dir)
            if name.startswith(prefix)
            and name.endswith(suffix)
            and name[len(prefix) : -len(suffix)].isdigit()
        )


def _identity(manifest: dict[str, Any]) -> dict[str, Any]:
    prompt = manifest.get("prompt_set", {})
    return {
        "format": manifest.get("format"),
        "dataset": manifest.get("dataset"),
        "split": manifest.get("split"),
        "teacher model": manifest.get("teacher", {}).get("model"),
        "chat mode": manifest.get("teacher", {}).get("chat"),
        "prompt set hash": prompt.get("hash"),
        "sampling": manifest.get("sampling"),
        "input examples": manifest.get("inputs"),
    }


def manifest_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable 'field: old -> new' for every identity field that changed."""
    before, after = _identity(old), _identity(new)
    return [
        f"{key}: {before[key]!r} -> {after[key]!r}" for key in before if before[key] != after[key]
    ]


def write_json_atomic(path: str, payload: Any) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _archive_previous_run(paths: RunPaths) -> str | None:
    """Move the old run folder and this split's CoT files to teacher/{split}.previous-<time>."""
    cot = paths.existing_cot_files()
    run_files = (
        [name for name in os.listdir(paths.run_dir) if name != ".lock"]
        if os.path.isdir(paths.run_dir)
        else []
    )
    if not run_files and not cot:
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%S%f")
    archive = f"{paths.run_dir}.previous-{stamp}"
    os.makedirs(archive)
    for name in run_files:
        shutil.move(os.path.join(paths.run_dir, name), os.path.join(archive, name))
    for path in cot:
        shutil.move(path, os.path.join(archive, os.path.basename(path)))
    return archive


def prepare_run_dir(
    paths: RunPaths, manifest: dict[str, Any], *, new_run: bool, log: Callable[[str], None]
) -> None:
    """Create, check or (new_run) replace the manifest. Call with the lock held."""
    os.makedirs(paths.run_dir, exist_ok=True)
    has_manifest = os.path.isfile(paths.manifest)
    foreign_cot = paths.existing_cot_files() if not has_manifest else []
    if has_manifest:
        with open(paths.manifest, encoding="utf-8") as f:
            old = json.load(f)
        differences = manifest_differences(old, manifest)
        if differences and not new_run:
            raise RunMismatchError(
                f"{paths.manifest} belongs to a different run:\n  "
                + "\n  ".join(differences)
                + "\nrerun with the original settings to resume it, or pass --new_run to move "
                "it aside and start over"
            )
        if not differences and not new_run:
            return
    elif (os.path.isfile(paths.records) or foreign_cot) and not new_run:
        what = paths.records if os.path.isfile(paths.records) else ", ".join(foreign_cot[:3])
        raise RunMismatchError(
            f"{what} exists but there is no run manifest, so it cannot be resumed safely "
            "(teacher files from elsewhere would be overwritten); pass --new_run to move them "
            "aside and start over, or choose another --out_dir"
        )
    if new_run:
        archive = _archive_previous_run(paths)
        if archive:
            log(f"moved the previous run to {archive}")
    os.makedirs(paths.run_dir, exist_ok=True)
    write_json_atomic(paths.manifest, manifest)


@contextlib.contextmanager
def run_lock(paths: RunPaths) -> Iterator[None]:
    """An exclusive flock on teacher/{split}/.lock; the OS drops it if the process dies."""
    os.makedirs(paths.run_dir, exist_ok=True)
    handle = open(paths.lock, "a+")  # noqa: SIM115 (held for the whole run)
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            raise RunLockedError(
                f"another teacher run holds {paths.lock}; wait for it or stop it first"
            ) from error
        yield
    finally:
        handle.close()


# ---------------------------------------------------------------------------- records


def read_records(path: str, *, repair: bool = False) -> list[dict[str, Any]]:
    """All records. A last line without its newline (a kill mid-write) is dropped, and with
    repair=True cut off the file so appending starts on a clean line; damage anywhere else is a
    RecordsFileError naming the line."""
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    records = []
    good_end = 0
    position = 0
    line_number = 0
    while position < len(data):
        newline = data.find(b"\n", position)
        line_number += 1
        if newline < 0:  # unterminated last line: written only partly
            break
        line = data[position:newline]
        position = newline + 1
        if line.strip():
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise RecordsFileError(
                    f"{path}: line {line_number}: not a JSON record ({error})"
                ) from error
            if not isinstance(record, dict) or "index" not in record or "status" not in record:
                raise RecordsFileError(
                    f"{path}: line {line_number}: field 'index'/'status' missing"
                )
            records.append(record)
        good_end = position
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def final_records(
    records: Sequence[dict[str, Any]], example_ids: Sequence[str], path: str
) -> dict[int, dict[str, Any]]:
    """index -> the record with the example's completion. Records must point at the example
    they claim (same id); a second completion for one example means two writers raced, which
    the lock prevents, so it is an error rather than silently picking one."""
    done: dict[int, dict[str, Any]] = {}
    for record in records:
        if record.get("status") != "ok":
            continue
        index = record["index"]
        if not isinstance(index, int) or not 0 <= index < len(example_ids):
            raise RecordsFileError(f"{path}: record index {index!r} out of range")
        if record.get("id") != example_ids[index]:
            raise RecordsFileError(
                f"{path}: record for index {index} has id {record.get('id')!r}, the example "
                f"is {example_ids[index]!r} (input data changed?)"
            )
        if index in done:
            raise RecordsFileError(f"{path}: example {index} ({record.get('id')}) has two records")
        done[index] = record
    return done


def write_cot_files(paths: RunPaths, entries: Sequence[str], chunk_size: int) -> list[str]:
    """Write {split}_CoT_{i}.json (chunk_size completions each, atomically) and remove stale
    higher-numbered files of the split, which the reader would otherwise append."""
    os.makedirs(paths.llm_dir, exist_ok=True)
    written = []
    for number, start in enumerate(range(0, len(entries), chunk_size)):
        path = paths.cot_path(number)
        tmp = f"{path}.tmp.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(list(entries[start : start + chunk_size]), f, ensure_ascii=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        written.append(path)
    for path in paths.existing_cot_files():
        if path not in written:
            os.remove(path)
    return written


def load_manifest(paths: RunPaths) -> dict[str, Any] | None:
    if not os.path.isfile(paths.manifest):
        return None
    with open(paths.manifest, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise RecordsFileError(f"{paths.manifest}: not valid JSON ({error})") from error
