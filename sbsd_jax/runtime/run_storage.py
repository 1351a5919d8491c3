"""Where a run's files live: a local folder or an object store (gs://...), behind one path type.

Local paths are made absolute, as before; URLs are kept as they are (`os.path.abspath` would
turn 'gs://b/x' into a local folder '<cwd>/gs:/b/x', so a TPU VM would write its checkpoints to
its own disk). `etils.epath` (what Orbax uses) reads and writes both.
"""

from __future__ import annotations

import os

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
