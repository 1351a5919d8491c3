"""Loading ml_collections config files (configs/*.py) by path.

Config files are loaded by path, not imported as a package, so `--config=configs/cqa.py`
works from any directory and a config can build on a sibling (`base.py`) the same way.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import pathlib
import re
import sys
import traceback
from collections.abc import Mapping

import ml_collections
from absl import flags
from ml_collections import config_flags

EXIT_CONFIG_ERROR = 2


class ConfigFileError(Exception):
    """A config file that is not there or does not load; the message names it (and the line).

    Not a ValueError: ml_collections rewraps those (with the whole traceback as message) when
    a `--config` file loads a sibling that fails."""


def load_config_file(path: os.PathLike[str] | str) -> ml_collections.ConfigDict:
    """`get_config()` of the Python config file at `path`; ConfigFileError (one line naming
    the file and line) when there is no such file or its code fails."""
    text = str(path)
    if missing := missing_config_file(text):
        raise ConfigFileError(missing)
    path = pathlib.Path(path)
    spec = importlib.util.spec_from_file_location(f"sbsd_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ConfigFileError(f"--config={text}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return module.get_config()
    except ConfigFileError:
        raise  # a sibling config (base.py) that failed: already named
    except Exception as error:
        if (line := config_file_error(error, text)) is None:
            raise
        raise ConfigFileError(line) from error


def load_sibling_config(config_file: str, name: str = "base.py") -> ml_collections.ConfigDict:
    """The config in the file `name` next to `config_file` (a config's own `__file__`)."""
    return load_config_file(pathlib.Path(config_file).with_name(name))


def _error_text(error: BaseException) -> str:
    """The innermost message of ml_collections' (possibly nested) KeyError/AttributeError."""
    message: object = error
    while isinstance(message, BaseException) and message.args:
        message = message.args[0]
    return str(message)


def _unknown_field(error: AttributeError | KeyError) -> str:
    """The field named by ml_collections' AttributeError/KeyError("'name'"), or its
    'Key "name" does not exist ... Did you mean "other"?', for --config.name=... when the
    config has no such field (configs are locked)."""
    text = _error_text(error)
    match = re.search(r"[\"']([^\"'\s]+)[\"']", text)
    return match.group(1) if match else text.strip("\"'")


def _suggestion(error: AttributeError | KeyError) -> str:
    """' (did you mean 'x'?)' when ml_collections has a close match, else ''."""
    match = re.search(r'Did you mean "([^"]+)"', _error_text(error))
    return f" (did you mean {match.group(1)!r}?)" if match else ""


def with_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, str]
) -> ml_collections.ConfigDict:
    """A copy of `config` with `{"field.sub": "text"}` applied exactly as the command line's
    `--config.field.sub=text` would be (same parser and types), so a sweep cell trained in
    this process is the run its printed command would start.

    Raises ValueError naming the override for an unknown field or an unparseable value."""
    argv = ["sbsd_jax", *(f"--config.{field}={value}" for field, value in overrides.items())]
    flag_values = flags.FlagValues()
    try:
        holder = config_flags.DEFINE_config_dict(
            "config", copy.deepcopy(config), flag_values=flag_values, sys_argv=argv
        )
        flag_values(argv)
    except flags.Error as error:
        raise ValueError(str(error)) from error
    except (AttributeError, KeyError) as error:
        missing = _unknown_field(error)
        raise ValueError(
            f"unknown config field {missing!r} (see configs/base.py for the fields)"
        ) from error
    return holder.value


def _config_path(argv: list[str]) -> str | None:
    """The file `--config=path[:argument]` (or `--config path`) names, if any."""
    for index, arg in enumerate(argv[1:], start=1):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1].split(":", 1)[0]
        if arg == "--config" and index + 1 < len(argv):
            return argv[index + 1].split(":", 1)[0]
    return None


def config_file_error(error: BaseException, path: str | None) -> str | None:
    """One line for an error the config file itself raised (its syntax, its code, or no
    get_config()), naming the file and line; None for any other error."""
    if not path:
        return None
    resolved = os.path.realpath(path)
    if isinstance(error, SyntaxError) and os.path.realpath(error.filename or "") == resolved:
        return f"--config={path}, line {error.lineno}: {error.msg}"
    if isinstance(error, AttributeError) and "'get_config'" in str(error):
        return f"--config={path}: the file defines no get_config()"
    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:  # ml_collections re-raises some errors
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for link in chain:
        if isinstance(link, ConfigFileError):  # a sibling config it loads: name that file
            return str(link)
    for link in chain:
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(link.__traceback__)
            if os.path.realpath(frame.filename) == resolved
        ]
        if lines:
            return f"--config={path}, line {lines[-1]}: {type(link).__name__}: {link}"
    return None


def missing_config_file(path: str | None) -> str | None:
    """One line when `--config` names no file (ml_collections' own answer is a page about
    'config_config' and the paths it attempted); None otherwise."""
    if not path or os.path.isfile(path):
        return None
    what = "a folder, not a config file" if os.path.isdir(path) else "no such file"
    return f"--config={path}: {what}"


def parse_config_flags(argv: list[str], *, program: str) -> list[str]:
    """absl's flag parsing (an `app.run` flags_parser), but a missing config file, an error in
    it, or an override of a field the config lacks (`--config.no_such_field=1`) is named with
    exit status 2, not a traceback."""
    if missing := missing_config_file(_config_path(argv)):
        print(f"{program}: {missing}", file=sys.stderr)
        sys.exit(EXIT_CONFIG_ERROR)
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        print(f"FATAL Flags parsing error: {error}", file=sys.stderr)
        print("Pass --helpshort or --helpfull to see help on flags.", file=sys.stderr)
        sys.exit(1)
    except Exception as error:
        in_file = config_file_error(error, _config_path(argv))
        if in_file is not None:
            print(f"{program}: {in_file}", file=sys.stderr)
            sys.exit(EXIT_CONFIG_ERROR)
        if not isinstance(error, (AttributeError, KeyError)):
            raise
        missing = _unknown_field(error)
        culprits = [arg for arg in argv[1:] if arg.startswith("--config.") and missing in arg]
        where = culprits[0] if culprits else f"--config.{missing}"
        print(
            f"{program}: unknown config field {missing!r} in {where}{_suggestion(error)}; see "
            "configs/base.py for the fields (new fields cannot be added from the command line)",
            file=sys.stderr,
        )
        sys.exit(EXIT_CONFIG_ERROR)
