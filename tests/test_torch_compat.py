"""The private torch APIs segdeploy uses, all behind segdeploy.export.torch_compat, checked on the installed torch."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

import segdeploy
from segdeploy.export import torch_compat

PACKAGE = Path(segdeploy.__file__).resolve().parent


def test_the_installed_torch_is_one_the_adapter_was_checked_with():
    assert torch_compat.SUPPORTED_TORCH == ("2.13",)
    assert torch_compat.torch_minor_version() in torch_compat.SUPPORTED_TORCH, (
        f"torch {torch.__version__}: check segdeploy/export/torch_compat.py against it, then add it to SUPPORTED_TORCH"
    )


def _private_torch_imports(path: Path) -> list[str]:
    """torch modules with a private component (``torch._guards``, ``torch.onnx._internal``) imported by ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        found += [n for n in names if n.split(".")[0] == "torch" and any(p.startswith("_") for p in n.split("."))]
    return found


def test_no_module_but_the_adapter_imports_private_torch_apis():
    offenders = {
        str(path.relative_to(PACKAGE)): imports
        for path in PACKAGE.rglob("*.py")
        if path.name != "torch_compat.py" and (imports := _private_torch_imports(path))
    }
    assert offenders == {}
    assert _private_torch_imports(PACKAGE / "export" / "torch_compat.py")  # the scan sees what the adapter does


class _Crop(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] > 0, "the model's own check"
        return x[..., 1:] * 2


def _capture(min_side: int) -> torch.export.ExportedProgram:
    side = torch.export.Dim("side", min=min_side, max=64)
    return torch.export.export(_Crop(), (torch.randn(1, 2, 16, 16),), dynamic_shapes=({2: side, 3: side},))


def test_a_size_the_capture_does_not_cover_is_a_guard_failure_and_other_assertions_are_not():
    module = _capture(min_side=8).module()
    assert torch_compat.call_guarded(module, torch.ones(1, 2, 12, 12)).shape == (1, 2, 12, 11)
    with pytest.raises(torch_compat.GuardFailure):
        torch_compat.call_guarded(module, torch.ones(1, 2, 4, 4))
    with pytest.raises(torch_compat.GuardFailure):
        torch_compat.call_guarded(module, torch.ones(1, 2, 12, 16))  # both sides are one Dim
    with pytest.raises(AssertionError) as caught:
        torch_compat.call_guarded(lambda x: _Crop()(x), torch.ones(1, 2, 3, 0))
    assert not isinstance(caught.value, torch_compat.GuardFailure)


def test_the_fake_mode_of_a_captured_program_is_found():
    program = _capture(min_side=4)
    values = [n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"]
    mode = torch_compat.detect_fake_mode(values)
    assert mode is not None and values[0].fake_mode is mode
    assert torch_compat.detect_fake_mode([torch.ones(2)]) is None


def test_the_onnx_exporter_takes_a_reusable_registry():
    internals = torch_compat.onnx_exporter_internals()
    assert internals is not None
    core, registration = internals
    assert callable(core.export) and hasattr(registration.ONNXRegistry, "from_torchlib")


def test_a_dispatch_mode_sees_every_aten_call():
    seen = []

    class Recorder(torch_compat.dispatch_mode_base()):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with Recorder():
        torch.nn.functional.max_pool2d(torch.ones(1, 1, 4, 4), 2, return_indices=True)
    assert any("max_pool2d_with_indices" in name for name in seen)


class _Rounded(nn.Module):
    """Rounds its size up to a multiple of 4 with Python ints: the capture records a guard on it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = int(-(-x.shape[-1] // 4) * 4)  # noqa: F841 -- the int() is the point
        return x * 2


def test_the_guards_of_a_capture_are_read_with_their_source_line_and_evaluated_fast():
    dims = {2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO}
    program = torch.export.export(_Rounded(), (torch.randn(1, 2, 16, 16),), dynamic_shapes=(dims,))
    values = [n.meta["val"] for n in program.graph.nodes if n.op == "placeholder"]
    guards = torch_compat.shape_guards(values)
    assert guards is not None and torch_compat.shape_guards([torch.ones(2)]) is None
    width = values[0].shape[3].node.expr
    rounded = [(expr, where) for expr, where in guards if width in expr.free_symbols]
    assert rounded and any("test_torch_compat.py" in text for _, where in rounded for text in where)
    expr = rounded[0][0]
    check = torch_compat.size_predicate(expr)
    held = [side for side in range(1, 40) if check({width: side})]
    assert 16 in held and 13 in held and 12 not in held and 17 not in held  # int(ceil(w / 4) * 4) == 16


def test_the_size_predicate_agrees_with_torchs_sympy_interpreter_on_its_size_functions():
    import sympy
    from torch.utils._sympy.functions import CeilToInt, FloorDiv, IntTrueDiv, PythonMod

    h = sympy.Symbol("h", integer=True, positive=True)
    exprs = [
        sympy.Le(PythonMod(4 - PythonMod(FloorDiv(h, 4), 4), 4), 0),  # Swin: no padding to a window multiple
        sympy.Eq(2 * CeilToInt(IntTrueDiv(FloorDiv(h - 1, 8) + 1, 2)), 16),  # MobileViT: int(ceil(h / 2) * 2)
        sympy.Eq(FloorDiv(h, 32), 1),
    ]
    for expr in exprs:
        fast = torch_compat.size_predicate(expr)
        for side in range(1, 200):
            assert bool(fast({h: side})) == bool(torch_compat.evaluate_size_expr(expr, {h: side})), (expr, side)


def test_contiguity_of_a_fake_tensor_is_told_without_a_guard():
    program = _capture(min_side=4)
    value = next(n.meta["val"] for n in program.graph.nodes if n.op == "placeholder")
    assert torch_compat.is_contiguous_or_false(value)
    assert not torch_compat.is_contiguous_or_false(torch.ones(3, 4).t())
