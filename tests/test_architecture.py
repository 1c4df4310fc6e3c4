"""The package's shape: imports flow one way (no cycles, function-level imports included), and a light front door."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import segdeploy

PACKAGE = Path(segdeploy.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str], module: str | None = None) -> set[str]:
    """segdeploy modules imported anywhere in ``path`` (top level, functions, TYPE_CHECKING blocks alike).

    ``module`` is the file's module name (default: from its place in the package).
    """
    found: set[str] = set()
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            # ``from pkg import sub`` depends on the submodule; ``from mod import name`` on the module
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            # the longest segdeploy module the name refers to (a function import names its module)
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != "segdeploy":
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, modules) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    probe = tmp_path / "probe.py"  # outside the package: no test writes into it
    probe.write_text("def f():\n    from segdeploy.verify import verify\n")
    assert _imports(probe, set(import_graph()), module="segdeploy.probe") == {"segdeploy.verify"}


def test_the_leaf_module_that_describes_a_file_imports_nothing_of_the_stages():
    graph = import_graph()
    assert graph["segdeploy.artifact"] <= {"segdeploy.errors", "segdeploy.shapes", "segdeploy._version"}


STAGES = [
    # where labeled images come from: read by INT8 calibration (export) and by eval alike
    ("segdeploy.pixels", "segdeploy.datasets"),
    ("segdeploy.models",),
    ("segdeploy.export", "segdeploy.precision"),
    ("segdeploy.runtime",),
    ("segdeploy.reference", "segdeploy.criteria", "segdeploy.proof", "segdeploy.verify"),
    ("segdeploy.bench", "segdeploy.report"),
    ("segdeploy.bundle",),
    # your data: predict and eval run files, plans and bundles (they read the manifest) on images
    (
        "segdeploy.metrics",
        "segdeploy.streams",
        "segdeploy.distributed",
        "segdeploy.candidates",
        "segdeploy.predict",
        "segdeploy.evaluate",
        "segdeploy.eval_report",
    ),
]
# The export pipeline verifies its file before writing it: the one place an earlier stage calls later ones.
ORCHESTRATION = {("segdeploy.export.onnx", "segdeploy.verify"), ("segdeploy.export.onnx", "segdeploy.runtime")}


def _stage(module: str) -> int | None:
    for index, prefixes in enumerate(STAGES):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    return None


def test_stages_import_only_earlier_stages():
    # datasets -> model -> export -> runtime -> verify -> bench -> bundle -> predict/eval: nothing imports a later stage
    for module, imported in import_graph().items():
        here = _stage(module)
        for target in imported:
            there = _stage(target)
            if here is None or there is None or (module, target) in ORCHESTRATION:
                continue
            assert there <= here, f"{module} imports the later stage {target}"


def test_importing_segdeploy_and_its_cli_loads_no_torch():
    code = "import sys, segdeploy, segdeploy.cli; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_no_module_is_much_over_450_lines():
    long = {
        str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500
    }
    assert not long, long


def test_ruff_lint_and_format_are_clean():
    import shutil

    import pytest

    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the dev extra: pip install -e '.[dev]')")
    root = PACKAGE.parent
    # Another ruff version has other rules and formatting: the style is the pinned version's.
    pinned = re.search(r'"ruff==([^"]+)"', (root / "pyproject.toml").read_text(encoding="utf-8"))
    assert pinned, "pyproject.toml pins ruff in the dev extra"
    installed = subprocess.run([ruff, "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    if installed != pinned.group(1):
        pytest.skip(f"ruff {installed} is installed; the style is ruff {pinned.group(1)}'s (pip install -e '.[dev]')")
    for args in (["check", "--no-cache", "."], ["format", "--no-cache", "--check", "."]):
        done = subprocess.run([ruff, *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
