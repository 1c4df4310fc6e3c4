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


# What every stage may use: these import only each other.
FOUNDATION = (
    "segdeploy._version",
    "segdeploy.errors",
    "segdeploy.shapes",
    "segdeploy.artifact",
    "segdeploy.fileio",
    "segdeploy.frames",
    "segdeploy.environment",
    "segdeploy.schemas",
    "segdeploy.threads",
)
STAGES = [
    # where labeled images come from: read by INT8 calibration (export) and by eval alike
    ("segdeploy.pixels", "segdeploy.datasets"),
    ("segdeploy.checkpoints", "segdeploy.models"),
    ("segdeploy.export", "segdeploy.precision", "segdeploy.quantize"),
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
        "segdeploy.data",
    ),
    # where the stages meet: export -> verify, cache -> export/build, bench -> cache
    ("segdeploy.cache", "segdeploy.pipeline"),
]
# The front doors call whatever they need.
FRONT = ("segdeploy.cli", "segdeploy.__main__")


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _place(module: str) -> int | None:
    """Where ``module`` sits: -1 the foundation (and the package's lazy front), a stage's index, then the front
    doors; None: nowhere yet."""
    if module == "segdeploy" or _within(module, FOUNDATION):
        return -1
    for index, prefixes in enumerate(STAGES):
        if _within(module, prefixes):
            return index
    return len(STAGES) if _within(module, FRONT) else None


def backward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a later place: a stage importing a later stage, the foundation importing a stage."""
    found = []
    for module, imported in sorted(graph.items()):
        here = _place(module)
        for target in sorted(imported):
            there = _place(target)
            if here is not None and there is not None and there > here:
                found.append(f"{module} imports the later {target}")
    return found


def test_every_module_has_a_place_in_the_data_flow():
    unplaced = sorted(module for module in import_graph() if _place(module) is None)
    assert not unplaced, f"add these to FOUNDATION, a stage or FRONT: {unplaced}"


def test_stages_import_only_earlier_stages():
    # foundation; datasets -> model -> export -> runtime -> verify -> bench -> bundle -> predict/eval -> pipeline;
    # cli: nothing imports a later place, and nothing is exempt
    assert backward_imports(import_graph()) == []


def test_a_function_level_import_of_a_later_stage_is_caught(tmp_path):
    probe = tmp_path / "probe.py"  # outside the package: no test writes into it
    probe.write_text("def build():\n    from segdeploy.verify import verify\n")
    graph = import_graph()
    graph["segdeploy.export.probe"] = _imports(probe, set(graph), module="segdeploy.export.probe")
    assert backward_imports(graph) == ["segdeploy.export.probe imports the later segdeploy.verify"]


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
