"""Before export: which input sizes a model accepts, and one ``torch.export`` capture of it.

Many real models take only some sizes: encoder-decoders whose skips must line
up accept multiples of 16 or 32, some raise on anything else. Those sizes are
found here by running the model on fake tensors (shapes only, no arithmetic,
so a probe of a large model costs milliseconds), and every later stage uses
them: verification shapes, the TensorRT profile, benchmarks.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segdeploy.errors import ExportError, SegdeployError, UserInputError, first_line
from segdeploy.shapes import Shape, format_shape

if TYPE_CHECKING:
    import torch
    from torch import nn

_MULTIPLES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class SizeRule:
    """The input sizes a model accepts: height and width multiples of ``multiple``, at least ``min_size``.

    Attributes:
        multiple: the size multiple (1: any size).
        min_size: the smallest side that works.
        out_channels: the channels of the main output at the trace shape.
        scale: output side / input side at the trace shape (1 for full-resolution segmentation).
    """

    multiple: int
    min_size: int
    out_channels: int
    scale: tuple[float, float] = (1.0, 1.0)

    def describe(self) -> str:
        sizes = "any height and width" if self.multiple == 1 else f"only multiples of {self.multiple}"
        return f"accepts {sizes}, at least {self.min_size}"

    def valid(self, side: int) -> bool:
        return side >= self.min_size and side % self.multiple == 0


class ModelRaised(UserInputError):
    """The model itself raised in PyTorch (not segdeploy)."""


def probe_sizes(module: nn.Module, shape: Shape, *, min_size_hint: int = 1) -> SizeRule:
    """Find the size multiple and minimum size of ``module`` around the NCHW ``shape``.

    The model must run at ``shape`` and give a rank-4 output. A size is accepted when the model
    runs and its output scales like at ``shape`` (same side for full-resolution outputs).

    Args:
        module: the network in eval mode.
        shape: the trace shape.
        min_size_hint: a known minimum (the registry's), searched from.

    Raises:
        ModelRaised: the model fails at ``shape`` (its own error, in one line) or returns no NCHW tensor.
    """
    n, c, h, w = shape
    out = _output_shape(module, shape)
    if isinstance(out, BaseException):
        raise ModelRaised(f"the model raised at {format_shape(shape)}: {describe_exception(out)}")
    if out is None or len(out) != 4:
        raise ModelRaised(f"the model's output at {format_shape(shape)} is not an NxCxHxW tensor (got {out})")
    scale = (out[2] / h, out[3] / w)

    def works(side_h: int, side_w: int) -> bool:
        got = _output_shape(module, (1, c, side_h, side_w))
        if isinstance(got, BaseException) or got is None or len(got) != 4:
            return False
        return (got[2], got[3]) == (round(side_h * scale[0]), round(side_w * scale[1])) and got[1] == out[1]

    multiple = next(
        (m for m in _MULTIPLES if h % m == 0 and w % m == 0 and works(h + m, w + 3 * m) and works(h + 2 * m, w + 2 * m)),
        None,
    )
    if multiple is None:
        raise ModelRaised(
            f"the model works at {format_shape(shape)} but at no other size tried (multiples up to "
            f"{_MULTIPLES[-1]}): export it with --static"
        )
    # smallest side: double until it works, then bisect on multiples (square inputs)
    low = max(multiple, -(-min_size_hint // multiple) * multiple)
    hi = low
    while hi < max(h, w) and not works(hi, hi):
        low, hi = hi, hi * 2
    if not works(hi, hi):
        return SizeRule(multiple, min(h, w), int(out[1]), scale)
    if hi != low or not works(low, low):
        while hi - low > multiple:
            mid = (low + hi) // 2 // multiple * multiple
            if works(mid, mid):
                hi = mid
            else:
                low = mid
    return SizeRule(multiple, hi, int(out[1]), scale)


def _output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | BaseException | None:
    """The main output's shape at ``shape``, from a run on fake tensors (a real run if the model needs data)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from segdeploy.models.loading import main_output

    try:
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
            out = main_output(module(torch.empty(shape)))
        return tuple(int(d) for d in out.shape) if isinstance(out, torch.Tensor) else None
    except Exception as exc:  # noqa: BLE001 - any failure of the model at this size is an answer
        if not _needs_data(exc):
            return exc
    try:  # branches on values cannot run on fake tensors: run the model for real
        with torch.no_grad():
            out = main_output(module(torch.zeros(shape)))
        return tuple(int(d) for d in out.shape) if isinstance(out, torch.Tensor) else None
    except Exception as exc:  # noqa: BLE001
        return exc


def _needs_data(exc: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(exc)}
    return bool(names & {"DataDependentOutputException", "DynamicOutputShapeException", "GuardOnDataDependentSymNode",
                         "UnsupportedOperatorException", "MetadataMismatchError"})


def capture(module: nn.Module, example: torch.Tensor, dynamic_axes: dict[int, str] | None) -> Any:
    """``torch.export.export`` of ``module`` at ``example``, with ``dynamic_axes`` left symbolic.

    Raises:
        ExportError: the capture failed (what and where, in one line), or a dynamic axis was specialized.
    """
    import torch
    from torch.export import Dim

    dynamic_shapes = ({axis: Dim.AUTO for axis in dynamic_axes},) if dynamic_axes else None
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise ExportError(f"torch.export could not capture the model: {describe_exception(exc)}") from exc
    if dynamic_axes:
        placeholder = next(n for n in program.graph.nodes if n.op == "placeholder"
                           and n.name == program.graph_signature.user_inputs[0])
        dims = placeholder.meta["val"].shape
        fixed = [name for axis, name in dynamic_axes.items() if isinstance(dims[axis], int)]
        if fixed:
            raise ExportError(
                f"the model only works at its traced {', '.join(fixed)} ({format_shape(tuple(example.shape))}): "
                "export it with --static, or make the model accept other sizes"
            )
    return program


# --------------------------------------------------------------------------- errors that name their cause
_GENERIC = ("Failed to export the model", "This is step", "Failed to convert the exported program")


def describe_exception(exc: BaseException) -> str:
    """One line naming what failed and where: the root cause's message and the model's own source line.

    torch's exporters wrap the real error in generic ones ("Failed to export the model with
    torch.export. This is step 1/3..."); the cause at the bottom of the chain names the op or the
    guard, and the deepest frame outside torch and segdeploy is the user's line.
    """
    if isinstance(exc, SegdeployError):
        return str(exc)
    chain = list(_chain(exc))
    root = next((e for e in reversed(chain) if not _generic(e)), chain[-1])
    lines = [line.strip() for line in str(root).strip().splitlines() if line.strip() and not _generic_text(line)]
    text = lines[0] if lines else type(root).__name__
    guard = next((line for line in lines[1:] if "guard" in line.lower() or "Eq(" in line or "Ne(" in line), None)
    if guard and guard not in text:
        text = f"{text} [{guard}]"
    where = _user_frame(chain)
    message = f"{type(root).__name__}: {text[:300]}"
    return f"{message} (at {where})" if where and where not in message else message


def _chain(exc: BaseException) -> list[BaseException]:
    seen, out = set(), []
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out.append(current)
        current = current.__cause__ or (current.__context__ if not current.__suppress_context__ else None)
    return out


def _generic(exc: BaseException) -> bool:
    return _generic_text(first_line(exc))


def _generic_text(line: str) -> bool:
    return any(line.strip().startswith(g) for g in _GENERIC)


def _user_frame(chain: list[BaseException]) -> str | None:
    """``file.py:line (code)`` of the deepest traceback frame in user code."""
    import torch

    ignored = (os.path.dirname(torch.__file__), os.path.dirname(__file__), os.sep + "site-packages" + os.sep,
               "<frozen", os.sep + "lib" + os.sep + "python")
    best = None
    for exc in chain:
        for frame in traceback.extract_tb(exc.__traceback__):
            if not any(part in frame.filename for part in ignored):
                best = f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.line or ''}".strip()
    return best
