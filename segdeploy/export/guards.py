"""What the capture assumed about the input's size, and the sizes where those assumptions hold.

``torch.export`` records every assumption it made while tracing as a guard on the
input's symbolic sizes (``Eq(2*ceiling(h/16), 16)`` when a model calls ``int()``
on a size, ``Eq((h//16)*(w//16), 64)`` when a reshape meets a baked size). With
``Dim.AUTO`` it keeps the axis dynamic even when a guard pins it down, so the
captured graph can hold sizes from the trace: the ONNX file then runs at the
traced size and fails (or is wrong) at others that PyTorch runs. The guards say
exactly which sizes the captured graph was traced for, and where in the model's
source the assumption was made.

``Ne`` guards are left out: torch adds them to keep sizes away from 0 and 1 and
from coincidences that change strides, not the computation the file does (the
runs that prove the rule cover those sizes).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from segdeploy.shapes import Shape

_SCAN_FACTOR = 4  # the scan for a side's valid range stops at this many times the traced side


@dataclass(frozen=True)
class Guard:
    """One assumption of the capture: a sympy relation over the input sizes and where it was made."""

    expr: Any
    where: str  # "file.py:line in function" of the model's code, or of torch's when it names none

    def text(self) -> str:
        return f"{self.expr} ({self.where})" if self.where else str(self.expr)


class CaptureGuards:
    """The capture's guards over batch, height and width, evaluated at concrete shapes.

    Args:
        guards: the relations that must hold.
        symbols: NCHW axis -> the sympy symbol of that input size (dynamic axes only).
    """

    def __init__(self, guards: Sequence[Guard], symbols: dict[int, Any]) -> None:
        self.guards = list(guards)
        self.symbols = dict(symbols)

    @classmethod
    def from_program(cls, program: Any, axes: dict[int, str]) -> CaptureGuards:
        """The guards of a dynamic capture (``axes``: the file input's axis -> ``batch``/``height``/``width``)."""
        import torch
        from torch._guards import detect_fake_mode

        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        name = program.graph_signature.user_inputs[0]
        value = next(n for n in placeholders if n.name == name).meta["val"]
        nchw = {"batch": 0, "height": 2, "width": 3}
        symbols = {}
        for axis, axis_name in axes.items():
            size = value.shape[axis]
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                symbols[nchw[axis_name]] = size.node.expr
        fake = detect_fake_mode([n.meta["val"] for n in placeholders if "val" in n.meta])
        env = getattr(fake, "shape_env", None)
        if env is None or not symbols:
            return cls([], symbols)
        free = set(symbols.values())
        seen: dict[Any, Guard] = {}
        for guard in env.guards:
            expr = guard.expr
            names = expr.free_symbols
            if not names or not names <= free or type(expr).__name__ in ("Ne", "Unequality") or expr in seen:
                continue
            seen[expr] = Guard(expr, _where(guard))
        return cls(list(seen.values()), symbols)

    def failing(self, shape: Sequence[int]) -> list[Guard]:
        """The guards that do not hold at an NCHW ``shape`` (empty: the capture was traced for it)."""
        from torch.utils._sympy.interp import sympy_interp
        from torch.utils._sympy.reference import PythonReferenceAnalysis

        values = {symbol: int(shape[axis]) for axis, symbol in self.symbols.items()}
        failed = []
        for guard in self.guards:
            try:
                holds = bool(sympy_interp(PythonReferenceAnalysis, values, guard.expr))
            except Exception:  # an expression the interpreter cannot evaluate: assume it fails
                holds = False
            if not holds:
                failed.append(guard)
        return failed

    def holds(self, shape: Sequence[int]) -> bool:
        return not self.failing(shape)

    def side_range(self, trace: Shape, axis: int, multiple: int, low: int) -> tuple[int, int | None]:
        """The range of valid sizes of one side (the others at the trace), on multiples of ``multiple``.

        Found by galloping from the traced size in both directions, then bisecting: the sizes a
        specialization allows form an interval around the traced one (``Eq(f(h), c)`` with ``f``
        non-decreasing). The upper end is None when the scan reached ``_SCAN_FACTOR`` times the trace.
        """
        trace_side = trace[axis]

        def ok(side: int) -> bool:
            shape = list(trace)
            shape[axis] = side
            return self.holds(shape)

        def edge(direction: int, limit: int) -> int:
            good, distance = trace_side, 1
            while True:
                probe, last = trace_side + direction * distance * multiple, False
                if direction * (probe - limit) > 0:  # past the limit: try the last multiple within it
                    probe = _round_up(limit, multiple) if direction < 0 else limit // multiple * multiple
                    if direction * (probe - good) <= 0:
                        return good
                    last = True
                if not ok(probe):
                    break
                good, distance = probe, distance * 2
                if last:
                    return good
            bad = probe
            while abs(bad - good) > multiple:  # bisect between the last good and the first bad size
                mid = good + (bad - good) // multiple // 2 * multiple
                good, bad = (mid, bad) if ok(mid) else (good, mid)
            return good

        lower = edge(-1, max(low, 1))
        cap = _SCAN_FACTOR * max(trace_side, 64)
        upper = edge(1, cap)
        return lower, None if upper >= cap - multiple else upper

    def narrow(self, rule: Any, trace: Shape) -> Any:
        """``rule`` (a ``SizeRule``) narrowed to the sizes the guards allow around the traced shape.

        Returns the rule unchanged when every probe of it passes the guards (the usual case), a rule with
        a higher minimum, a maximum or a larger multiple, or a fixed-size rule at the traced height and width.
        """
        if not self.guards or not {2, 3} <= set(self.symbols):
            return rule
        probes = _rule_probes(rule, trace)
        failing = [g for shape in probes for g in self.failing(shape)]
        if not failing:
            return rule
        cause = _describe_cause(failing)
        multiples = [m for m in (1, 2, 4, 8, 16, 32, 64, 128) if m % rule.multiple == 0]
        for m in multiples:
            if trace[2] % m or trace[3] % m:
                continue
            ranges = [self.side_range(trace, axis, m, rule.min_size) for axis in (2, 3)]
            low = max(max(r[0] for r in ranges), rule.min_size)
            highs = [r[1] for r in ranges if r[1] is not None]
            high = min(highs) if highs else None
            if high is not None and rule.max_size is not None:
                high = min(high, rule.max_size)
            if high is not None and high <= low:
                continue  # only the traced size along this multiple
            narrowed = replace(rule, multiple=m, min_size=_round_up(low, m), max_size=high, narrowed=cause)
            if all(self.holds(shape) for shape in _rule_probes(narrowed, trace)):
                return narrowed
        return replace(rule, fixed=(trace[2], trace[3]), narrowed=cause)


def _rule_probes(rule: Any, trace: Shape) -> list[Shape]:
    """Shapes over a rule's range that the guards must accept: its ends, beyond the trace, non-square, batch 2."""
    n, c, h, w = trace
    m, low = rule.multiple, _round_up(rule.min_size, rule.multiple)
    high = rule.max_size if rule.max_size is not None else 2 * max(h, w)
    high = max(high // m * m, low)

    def side(v: int) -> int:
        return min(max(v // m * m, low), high)

    shapes = [(2, c, low, low), (1, c, high, high), (2, c, side(2 * h), side(w // 2))]
    shapes.append((1, c, side(h // 2), side(2 * w)))
    if m == 1:
        shapes.append((1, c, side(h + 1 if h % 2 == 0 else h + 2), side(w // 2 + 1)))
    return shapes


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


_FRAME = re.compile(r"([^()\s,]*?\.py)(?::|, line )(\d+) in (\w+)")


def _where(guard: Any) -> str:
    """``file.py:line in function`` where a guard was added: the model's frame when torch recorded one."""
    sloc = getattr(guard, "sloc", None)
    for text in (getattr(sloc, "maybe_user_loc", None), getattr(sloc, "framework_loc", None), str(sloc or "")):
        if text:
            match = _FRAME.search(str(text))
            if match:
                file = match.group(1).split("site-packages/")[-1]
                return f"{file}:{match.group(2)} in {match.group(3)}"
    return ""


def _describe_cause(failing: Sequence[Guard]) -> str:
    """One line on what specialized the capture: the first failing guard made in the model's own code."""
    own = [g for g in failing if g.where and "torch/" not in g.where and not g.where.startswith("_")]
    chosen = (own or list(failing))[0]
    return f"the capture specialized on the input size at {chosen.text()}"
