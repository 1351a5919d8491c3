"""Loading ml_collections config files (configs/*.py) by path.

Config files are loaded by path, not imported as a package, so `--config=configs/cqa.py`
works from any directory and a config can build on a sibling (`base.py`) the same way.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib

import ml_collections


def load_config_file(path: os.PathLike[str] | str) -> ml_collections.ConfigDict:
    """`get_config()` of the Python config file at `path`."""
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"sbsd_config_{path.stem}", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise ValueError(f"cannot load config file {str(path)!r}: no such Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def load_sibling_config(config_file: str, name: str = "base.py") -> ml_collections.ConfigDict:
    """The config in the file `name` next to `config_file` (a config's own `__file__`)."""
    return load_config_file(pathlib.Path(config_file).with_name(name))
