"""Where a run's files live: a local folder or an object store (gs://...), behind one path type.

Local paths are made absolute, as before; URLs are kept as they are (`os.path.abspath` would
turn 'gs://b/x' into a local folder '<cwd>/gs:/b/x', so a TPU VM would write its checkpoints to
its own disk). `etils.epath` (what Orbax uses) reads and writes both.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any

from etils import epath


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether `path` names an object-store location (gs://...) rather than a local file; the
    test epath itself uses to pick a URL backend."""
    return "://" in os.fspath(path)


def absolute_path(path: str | os.PathLike[str]) -> epath.Path:
    """`path` as an epath.Path: local paths made absolute (as `os.path.abspath` would), URLs
    kept as given (`abspath('gs://b/x')` would make it a local '<cwd>/gs:/b/x' folder)."""
    if is_url(path):
        return epath.Path(path)
    return epath.Path(os.path.abspath(os.fspath(path)))


def local_folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why a local folder could not be used (written to, or created) by a run, None when it
    can, or for a URL (the object store answers when it is first written)."""
    if is_url(path):
        return None
    folder = os.path.abspath(os.fspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        return f"{folder} exists and is not a folder"
    existing = folder
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"cannot create {folder}: {existing} is a file"
    verb = "write to" if existing == folder else "create"
    try:  # a probe folder, removed at once: permissions, read-only mounts, /proc alike
        os.rmdir(tempfile.mkdtemp(prefix=".sbsd_probe_", dir=existing))
    except OSError as error:
        return f"cannot {verb} {folder}: {existing} is not writable ({error.strerror})"
    return None


def remove_empty_folders(path: str | os.PathLike[str]) -> None:
    """Removes `path` and the folders below it when none holds a file: what a run that stopped
    on bad input before writing anything had created. Never removes a file (os.rmdir refuses
    a folder that is not empty); a URL is left alone."""
    if is_url(path) or not os.path.isdir(path):
        return
    for folder, _, _ in os.walk(os.fspath(path), topdown=False):
        with contextlib.suppress(OSError):  # holds a file (or a folder that does): kept
            os.rmdir(folder)


def read_json_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file (local or a URL), in order; [] when it is absent.
    A line a crash left half written, or with damaged bytes, is skipped, not fatal: the run
    that owns the file drops such lines when it resumes."""
    file = absolute_path(path)
    if not file.exists():
        return []
    rows = []
    for line in file.read_bytes().decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
