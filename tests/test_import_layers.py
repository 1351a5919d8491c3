"""The package's layers hold: imports run downwards only, the user's ml_collections config is
read at the entry points alone, and the train package keeps its functions short. Checked on
the source (ast), so an import inside a function counts too."""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "sbsd_jax"

# The programs (`python -m ...`) and the boundary they share: where a ConfigDict is loaded,
# validated and turned into a RunSpec. Nothing else may import ml_collections.
ENTRY_POINTS = frozenset(
    {
        "main.py",
        "aot.py",
        "experiments/demo.py",
        "experiments/sweep.py",
        "data/inspect.py",
        "teacher/__main__.py",
        "eval/report.py",
    }
)
CONFIG_BOUNDARY = frozenset(
    {"experiments/config_files.py", "settings/validation.py", "settings/from_config.py"}
)

# Layer -> the sbsd_jax packages it must not import (lowest layer first).
FORBIDDEN: dict[str, frozenset[str]] = {
    "runtime": frozenset(
        {"model", "data", "settings", "train", "eval", "teacher", "experiments", "cloud"}
    ),
    "model": frozenset({"data", "settings", "train", "eval", "teacher", "experiments", "cloud"}),
    "data": frozenset({"settings", "train", "eval", "teacher", "experiments", "cloud"}),
    "settings": frozenset({"train", "eval", "teacher", "experiments", "cloud"}),
    "eval": frozenset({"train", "teacher", "experiments", "cloud"}),
    "train": frozenset({"teacher", "experiments", "cloud"}),
}
MAX_FUNCTION_LINES = 80


def modules() -> list[pathlib.Path]:
    return sorted(PACKAGE.rglob("*.py"))


def relative(path: pathlib.Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imported(path: pathlib.Path) -> set[str]:
    """Every module name an import statement of the file names (top level or nested)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sbsd_packages(names: set[str]) -> set[str]:
    """The sbsd_jax sub-packages (or top-level modules) among imported names."""
    parts = (name.split(".") for name in names if name.startswith("sbsd_jax."))
    return {part[1] for part in parts if len(part) > 1}


def test_only_the_entry_points_read_ml_collections():
    readers = {
        relative(path)
        for path in modules()
        if any(name.split(".")[0] == "ml_collections" for name in imported(path))
    }
    assert readers <= ENTRY_POINTS | CONFIG_BOUNDARY, sorted(readers - ENTRY_POINTS)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_run_downwards(layer: str):
    upward = {}
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        if relative(path) in ENTRY_POINTS:
            continue  # a program may use anything below it
        wrong = sbsd_packages(imported(path)) & FORBIDDEN[layer]
        if wrong:
            upward[relative(path)] = sorted(wrong)
    assert upward == {}


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above can fail: a nested import from train inside a data module is caught."""
    module = tmp_path / "bad.py"
    module.write_text("def f():\n    from sbsd_jax.train.partitioning import batch_sharding\n")
    assert sbsd_packages(imported(module)) & FORBIDDEN["data"] == {"train"}


def long_functions(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return [
        f"{relative(path)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]


def test_no_train_function_is_longer_than_80_lines():
    found = [
        line for path in sorted((PACKAGE / "train").glob("*.py")) for line in long_functions(path)
    ]
    assert found == []
