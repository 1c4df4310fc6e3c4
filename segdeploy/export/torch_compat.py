"""The one place segdeploy touches torch's private APIs, and the torch versions they were checked with.

torch offers no public way to do a few things segdeploy needs: find the fake-tensor mode of a captured
program (to splice a rewrite into it), read the guards a capture recorded on the input's sizes and
evaluate them at concrete sizes, tell whether a fake tensor is contiguous without adding a guard, reuse
the ONNX exporter's op registry between exports (building it costs seconds per export), observe ATen
calls (to record index unpooling), and tell a capture's input guard refusing a size from any other
assertion. Each is wrapped here, so a torch upgrade that moves one
breaks this module and its test (``tests/test_torch_compat.py``), not the stages that use it.

Every function imports torch lazily: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

SUPPORTED_TORCH = ("2.13",)
"""torch minor versions these wrappers were checked with; ``tests/test_torch_compat.py`` fails on any other."""


class GuardFailure(AssertionError):
    """A captured program's input guards refused an input (a size the capture did not cover)."""


def torch_minor_version() -> str:
    """The installed torch's ``major.minor`` (``"2.13"`` for ``2.13.0+cpu``)."""
    import torch

    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


def detect_fake_mode(values: Sequence[Any]) -> Any | None:
    """The fake-tensor mode the given fake values belong to, or None (``torch._guards.detect_fake_mode``)."""
    from torch._guards import detect_fake_mode as detect

    return detect(list(values))


def shape_guards(values: Sequence[Any]) -> list[tuple[Any, tuple[str, ...]]] | None:
    """The guards a capture recorded on the symbolic sizes of its fake ``values``, with where each was made.

    Reads the shape environment of the values' fake-tensor mode (``ShapeEnv.guards``: ``ShapeGuard``
    with ``expr``, a sympy relation, and ``sloc``, whose ``maybe_user_loc`` / ``framework_loc`` name the
    source line). None when the values carry no shape environment.

    Returns:
        ``(expr, locations)`` per guard; ``locations`` are texts such as ``"model.py:12 in forward"``,
        the user's frame first when torch recorded one.
    """
    mode = detect_fake_mode(values)
    env = getattr(mode, "shape_env", None)
    if env is None:
        return None
    guards = []
    for guard in env.guards:
        sloc = getattr(guard, "sloc", None)
        texts = (getattr(sloc, "maybe_user_loc", None), getattr(sloc, "framework_loc", None), sloc)
        guards.append((guard.expr, tuple(str(t) for t in texts if t)))
    return guards


def size_predicate(expr: Any) -> Callable[[Mapping[Any, int]], Any]:
    """A fast Python function evaluating a sympy expression over input sizes (``{symbol: int}`` -> value).

    torch's size expressions use its own sympy functions (``FloorDiv``, ``PythonMod``, ``CeilToInt``...).
    Printed as Python by torch's guard printer (``torch.utils._sympy.printers.PythonPrinter``, what
    torch's own guard code uses) they evaluate in microseconds; an expression the printer cannot write
    falls back to torch's sympy interpreter (milliseconds).
    """
    import math

    symbols = sorted(expr.free_symbols, key=str)

    def interpreted(values: Mapping[Any, int]) -> Any:
        return evaluate_size_expr(expr, values)

    try:
        from torch.utils._sympy.printers import PythonPrinter

        names = [f"_s{i}" for i in range(len(symbols))]
        code = PythonPrinter().doprint(expr.xreplace(dict(zip(symbols, (_symbol(n) for n in names)))))
        scope = {"math": math, "__builtins__": {"max": max, "min": min, "abs": abs}}
        compiled = eval(f"lambda {', '.join(names)}: {code}", scope)  # torch's own printer wrote ``code``
    except Exception:  # a function the printer does not know
        return interpreted

    def fast(values: Mapping[Any, int]) -> Any:
        try:
            return compiled(*(values[s] for s in symbols))
        except (NameError, TypeError, ZeroDivisionError):
            return interpreted(values)

    return fast


def evaluate_size_expr(expr: Any, values: Mapping[Any, int]) -> Any:
    """A sympy expression over input sizes at ``{symbol: int}``, by torch's sympy interpreter (slow, exact)."""
    from torch.utils._sympy.interp import sympy_interp
    from torch.utils._sympy.reference import PythonReferenceAnalysis

    return sympy_interp(PythonReferenceAnalysis, {s: values[s] for s in expr.free_symbols}, expr)


def _symbol(name: str) -> Any:
    import sympy

    return sympy.Symbol(name, integer=True)


def is_contiguous_or_false(value: Any) -> bool:
    """Whether a (fake) tensor is provably contiguous, False when it cannot tell (never adds a guard)."""
    from torch._prims_common import is_contiguous_or_false as contiguous

    return bool(contiguous(value))


def dispatch_mode_base() -> type:
    """The base class of modes that see every ATen call (``torch.utils._python_dispatch.TorchDispatchMode``)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    return TorchDispatchMode


def onnx_exporter_internals() -> tuple[Any, Any] | None:
    """torch's ONNX exporter core and its registry module, when ``core.export`` takes a reusable ``registry``.

    ``torch.onnx.export`` builds its op registry from onnxscript on every call; the function it wraps
    (``torch.onnx._internal.exporter._core.export``) takes one. None where this torch has another shape:
    the caller then uses the public ``torch.onnx.export``.
    """
    import inspect

    try:
        from torch.onnx._internal.exporter import _core, _registration
    except ImportError:
        return None
    if "registry" not in inspect.signature(_core.export).parameters or not hasattr(_registration, "ONNXRegistry"):
        return None
    return _core, _registration


def call_guarded(module: Any, *args: Any) -> Any:
    """Run the module of a captured program (``ExportedProgram.module()``), its input guards checked.

    Raises:
        GuardFailure: the capture's guards refuse ``args``. The guards are generated code calling
            ``torch._assert(condition, "Guard failed: ...")`` (torch/export/_unlift.py), so they raise a
            plain ``AssertionError`` told apart from the model's own by that message alone.
    """
    try:
        return module(*args)
    except AssertionError as exc:
        if str(exc).startswith("Guard failed"):
            raise GuardFailure(str(exc)) from exc
        raise
