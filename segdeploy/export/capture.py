"""Before export: one ``torch.export`` capture of the model, and the input sizes it accepts.

Many real models take only some sizes: encoder-decoders whose skips must line
up accept multiples of 16 or 32, some raise on anything else. The capture
already says most of it: each dynamic side is a symbol with a range, and the
output's sides are expressions of it (``32*(H//32)`` for a SegNet that unpools
without ``output_size``: right only at multiples of 32). That rule is then
confirmed by running the model for real once at the smallest size it allows
(cheap), which also catches checks the capture cannot see (a model that raises
on sizes it dislikes); if that fails, small multiples are searched the same way.
Every later stage uses the rule: verification shapes, the TensorRT profile,
benchmarks.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Sequence
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
    """The input sizes a file accepts: height and width multiples of ``multiple`` in ``[min_size, max_size]``.

    Attributes:
        multiple: the size multiple (1: any size).
        min_size: the smallest side that works.
        out_channels: the channels of the main output at the trace shape.
        max_size: the largest side (None: unbounded).
        fixed: ``(height, width)`` when only the traced size is accepted.
        narrowed: why the rule is narrower than what the model itself accepts ("" when it is not).
    """

    multiple: int
    min_size: int
    out_channels: int
    max_size: int | None = None
    fixed: tuple[int, int] | None = None
    narrowed: str = ""

    def describe(self) -> str:
        if self.fixed is not None:
            return f"accepts only its traced size, fixed height x width {self.fixed[0]}x{self.fixed[1]}"
        sizes = "any height and width" if self.multiple == 1 else f"only multiples of {self.multiple}"
        if self.max_size is not None:
            return f"accepts {sizes}, from {self.min_size} to {self.max_size}"
        return f"accepts {sizes}, at least {self.min_size}"

    def valid(self, side: int) -> bool:
        if self.fixed is not None:
            return side in self.fixed
        return side >= self.min_size and side % self.multiple == 0 and (self.max_size is None or side <= self.max_size)


class ModelRaised(UserInputError):
    """The model itself raised in PyTorch (not segdeploy)."""


def check_runs(module: nn.Module, shape: Shape) -> None:
    """Run the model once at ``shape``; its own failure becomes one line naming it.

    Raises:
        ModelRaised: the model raised, or returned no NxCxHxW tensor.
    """
    out = _output_shape(module, shape)
    if isinstance(out, BaseException):
        raise ModelRaised(f"the model raised at {format_shape(shape)}: {describe_exception(out)}")
    if out is None or len(out) != 4:
        raise ModelRaised(f"the model's output at {format_shape(shape)} is not an NxCxHxW tensor (got {out})")


def size_rule(
    program: Any,
    module: nn.Module,
    shape: Shape,
    *,
    spatial_axes: Sequence[int],
    out_axes: Sequence[int],
    min_size_hint: int = 1,
) -> SizeRule:
    """The sizes ``module`` accepts, from the captured ``program`` and one real run at the smallest of them.

    Args:
        program: the dynamic capture (of the model, or of a wrapper around it).
        module: the network itself (NCHW float input), run for real to confirm.
        shape: the NCHW trace shape.
        spatial_axes, out_axes: which axes of the program's input and main output are height and width.
        min_size_hint: a known minimum (the registry's).

    Raises:
        ModelRaised: the model accepts no size the search tried but the traced one.
    """
    _, c, h, w = shape
    out_channels = network_channels(module, program, shape)
    multiple, lower = 1, min_size_hint
    for axis, out_axis in zip(spatial_axes, out_axes):
        side_multiple, side_lower = _symbolic_side(program, axis, out_axis)
        multiple, lower = max(multiple, side_multiple), max(lower, side_lower)
    candidates = [m for m in _MULTIPLES if m >= multiple and h % m == 0 and w % m == 0] or [multiple]
    for m in candidates:
        smallest = -(-max(lower, m) // m) * m
        # non-square, and odd when any size goes: one run shows both sides' rule
        if _works(module, (1, c, smallest, smallest + m), out_channels):
            return SizeRule(m, smallest, int(out_channels))
        if m == candidates[0] and _works(module, (1, c, h + m, w + 3 * m), out_channels):
            # the rule holds near the trace but not down at its minimum: find that minimum
            return SizeRule(m, _smallest_working(module, c, m, smallest, min(h, w), out_channels), int(out_channels))
    raise ModelRaised(
        f"the model works at {format_shape(shape)} but at no other size tried (multiples up to {candidates[-1]}): "
        "export it with --static"
    )


def network_channels(module: nn.Module, program: Any, shape: Shape) -> int:
    """The network's output channels: from the capture, or for a class-map head (none left) from a run at ``shape``."""
    out = _main_output_val(program).shape
    if len(out) == 4 and isinstance(out[1], int):
        return int(out[1])
    got = _output_shape(module, (1, *shape[1:]))
    return int(got[1]) if isinstance(got, tuple) and len(got) == 4 else 1


def _symbolic_side(program: Any, axis: int, out_axis: int) -> tuple[int, int]:
    """(multiple, lower bound) of one input side: from its symbol's range, and the output side's expression.

    The output side must be the input side times the traced ratio (1 for full-resolution outputs);
    the smallest multiple ``m`` for which that holds at every ``m * k`` is the side's multiple.
    """
    import sympy

    side = _user_input_val(program).shape[axis]
    out_side = _main_output_val(program).shape[out_axis]
    if isinstance(side, int):
        return 1, side
    expr = side.node.expr
    head, _ = expr.as_coeff_Mul()
    coefficient = int(head) if head.is_Integer and head > 0 else 1
    lower = 1
    for symbol in expr.free_symbols:
        bounds = program.range_constraints.get(symbol)
        if bounds is not None and bounds.lower.is_finite:
            lower = max(lower, int(bounds.lower) * coefficient)
    hints = (
        getattr(side.node, "hint", None),
        None if isinstance(out_side, int) else getattr(out_side.node, "hint", None),
    )
    if len(expr.free_symbols) != 1 or None in hints:
        return coefficient, lower
    (symbol,) = expr.free_symbols
    scale = sympy.Rational(int(hints[1]), int(hints[0]))
    k = sympy.Symbol("k", integer=True, positive=True)
    for m in _MULTIPLES:
        if m % coefficient == 0:
            at = {symbol: sympy.Integer(m // coefficient) * k}  # the input side becomes m * k
            if sympy.simplify(out_side.node.expr.subs(at) - scale * expr.subs(at)) == 0:
                return m, lower
    return coefficient, lower


def _smallest_working(module: nn.Module, channels: int, m: int, low: int, high: int, out_channels: int) -> int:
    """Bisect, on multiples of ``m``, the smallest square side that works between ``low`` and ``high``."""
    hi = -(-high // m) * m
    while hi - low > m:
        mid = (low + hi) // 2 // m * m
        if _works(module, (1, channels, mid, mid + m), out_channels):
            hi = mid
        else:
            low = mid
    return hi


def _works(module: nn.Module, shape: tuple[int, int, int, int], out_channels: int) -> bool:
    got = _output_shape(module, shape)
    if isinstance(got, BaseException) or got is None or len(got) != 4 or got[1] != out_channels:
        return False
    return (got[2], got[3]) == shape[2:] or (got[2] * shape[3] == got[3] * shape[2])


def _output_shape(module: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | BaseException | None:
    """The main output's shape after a real run on zeros (small sizes only: cheap)."""
    import torch

    from segdeploy.models.loading import main_output
    from segdeploy.threads import fitted_threads

    try:
        with torch.inference_mode(), fitted_threads():
            out = main_output(module(torch.zeros(shape)))
        return tuple(int(d) for d in out.shape) if isinstance(out, torch.Tensor) else None
    except Exception as exc:
        return exc


def _user_input_val(program: Any) -> Any:
    name = program.graph_signature.user_inputs[0]
    return next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name).meta["val"]


def _main_output_val(program: Any) -> Any:
    output = next(n for n in program.graph.nodes if n.op == "output")
    first = output.args[0][0] if isinstance(output.args[0], (tuple, list)) else output.args[0]
    return first.meta["val"]


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
        placeholder = next(
            n for n in program.graph.nodes if n.op == "placeholder" and n.name == program.graph_signature.user_inputs[0]
        )
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

    ignored = (
        os.path.dirname(torch.__file__),
        os.path.dirname(__file__),
        os.sep + "site-packages" + os.sep,
        "<frozen",
        os.sep + "lib" + os.sep + "python",
    )
    best = None
    for exc in chain:
        for frame in traceback.extract_tb(exc.__traceback__):
            if not any(part in frame.filename for part in ignored):
                best = f"{os.path.basename(frame.filename)}:{frame.lineno} {frame.line or ''}".strip()
    return best
