"""The Bazel BUILD file lists exactly the modules and tests that exist on disk."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _build_calls() -> list[ast.Call]:
    tree = ast.parse((ROOT / "BUILD").read_text(), filename="BUILD")
    return [
        node.value
        for node in tree.body
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
    ]


def _value(node: ast.expr) -> object:
    """A literal, or a `glob([...])` call expanded against the files on disk."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "glob":
        patterns = ast.literal_eval(node.args[0])
        return sorted(str(p.relative_to(ROOT)) for pat in patterns for p in ROOT.glob(pat))
    return ast.literal_eval(node)


def _kwargs(call: ast.Call) -> dict[str, object]:
    return {kw.arg: _value(kw.value) for kw in call.keywords}


def _rules(kind: str) -> list[dict[str, object]]:
    return [_kwargs(c) for c in _build_calls() if getattr(c.func, "id", None) == kind]


def test_build_file_is_plain_starlark_with_native_rules():
    kinds = {getattr(c.func, "id", None) for c in _build_calls()}
    assert kinds <= {"py_library", "py_test", "py_binary", "filegroup", "package"}
    assert all(_rules("py_library")), "every rule parses"
    assert "load(" not in (ROOT / "BUILD").read_text(), "native rules only: no load() needed"


def test_every_package_module_is_in_exactly_one_library():
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "sbsd_jax").rglob("*.py")}
    srcs = [s for rule in _rules("py_library") for s in rule.get("srcs", [])]
    listed = [s for s in srcs if s.startswith("sbsd_jax/")]
    assert len(listed) == len(set(listed)), "a module is listed twice"
    assert sorted(on_disk - set(listed)) == [], "add these modules to BUILD"
    assert sorted(set(listed) - on_disk) == [], "BUILD lists modules that no longer exist"


def test_every_test_file_has_a_py_test():
    on_disk = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    tests = _rules("py_test")
    listed = {src for rule in tests for src in rule["srcs"] if "/test_" in src}
    assert sorted(on_disk - listed) == [], "add py_test targets for these files"
    assert sorted(listed - on_disk) == [], "BUILD has py_test targets for files that are gone"
    for rule in tests:
        assert rule["name"] == pathlib.Path(rule["main"]).stem, rule


def test_library_dependencies_resolve_to_targets_in_this_file():
    names = {r["name"] for kind in ("py_library", "py_test", "py_binary") for r in _rules(kind)}
    for kind in ("py_library", "py_test", "py_binary"):
        for rule in _rules(kind):
            for dep in rule.get("deps", []):
                assert dep.startswith(":") and dep[1:] in names, (rule["name"], dep)
