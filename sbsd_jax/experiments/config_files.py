"""Loading ml_collections config files (configs/*.py) by path.

Config files are loaded by path, not imported as a package, so `--config=configs/cqa.py`
works from any directory and a config can build on a sibling (`base.py`) the same way.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

import ml_collections
from absl import flags

EXIT_CONFIG_ERROR = 2


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


def parse_config_flags(argv: list[str], *, program: str) -> list[str]:
    """absl's flag parsing (an `app.run` flags_parser), but an override of a field the config
    lacks (`--config.no_such_field=1`) is named with exit status 2, not a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"FATAL Flags parsing error: {error}", file=sys.stderr)
        print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(1)
    except (AttributeError, KeyError) as error:
        # ml_collections raises AttributeError/KeyError("'name'") for --config.name=... when the
        # config has no such field (configs are locked: no new fields from the command line).
        missing = str(error).strip("\"'")
        culprits = [arg for arg in argv[1:] if arg.startswith("--config.") and missing in arg]
        where = culprits[0] if culprits else f"--config.{missing}"
        print(
            f"{program}: unknown config field {missing!r} in {where}; see configs/base.py "
            "for the fields (new fields cannot be added from the command line)",
            file=sys.stderr,
        )
        sys.exit(EXIT_CONFIG_ERROR)
