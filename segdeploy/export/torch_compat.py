"""The one place segdeploy touches torch's private APIs, and the torch versions they were checked with.

torch offers no public way to do a few things segdeploy needs: find the fake-tensor mode of a captured
program (to splice a rewrite into it), reuse the ONNX exporter's op registry between exports (building
it costs seconds per export), observe ATen calls (to record index unpooling), and tell a capture's input
guard refusing a size from any other assertion. Each is wrapped here, so a torch upgrade that moves one
breaks this module and its test (``tests/test_torch_compat.py``), not the stages that use it.

Every function imports torch lazily: importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
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
