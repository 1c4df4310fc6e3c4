"""What the capture assumed about the input's size: where the written file may differ from the model.

``torch.export`` records every assumption it made while tracing as a guard on the input's symbolic
sizes (``Eq(2*ceiling(h/16), 16)`` when a model calls ``int()`` on a size, ``Eq((h//16)*(w//16), 64)``
when a reshape meets a baked size). With ``Dim.AUTO`` it keeps the axis dynamic even when a guard
pins it down, so the captured graph can hold sizes from the trace: the ONNX file then runs at the
traced size and fails (or is wrong) at others that PyTorch runs.

A guard is evidence, not proof. torch also records guards that change nothing the graph computes: a
contiguity check of a dimension that is 1 at the trace (``Eq(h//32, 1)`` for a SegNet traced at
32x32, whose file is exact at 256x256). So a guard never narrows the size rule by itself:

- where a guard fails inside the rule, the runs of the written file look there (``suspect_shapes``);
- where such a run fails, the guards explain why (``explain``, naming the model's source line) and
  propose the narrower rules (``candidates``: a range, or a larger multiple such as "no padding
  needed" gives) that runs then have to prove (``segdeploy.proof.narrowed_rule``).

``Ne`` guards are left out: torch adds them to keep sizes away from 0 and 1 and from coincidences
that change strides. Guards are compiled to Python once (``torch_compat.size_predicate``), so
evaluating all of them at one shape costs microseconds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from segdeploy.shapes import Shape

SCAN_FACTOR = 4
"""The guards are scanned up to this many times the traced side (at least 4 x 64); the runs go beyond."""

_MULTIPLES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class Guard:
    """One assumption of the capture: a sympy relation over the input sizes and where it was made."""

    expr: Any
    where: str  # "file.py:line in function" of the model's code, or of torch's when it names none

    def text(self) -> str:
        return f"{self.expr} ({self.where})" if self.where else str(self.expr)

    @property
    def own(self) -> bool:
        """Made in the model's own code (not in torch's)."""
        return bool(self.where) and "torch/" not in self.where and not self.where.startswith("_")

    @property
    def layout(self) -> bool:
        """Made by torch's contiguity and stride checks: about memory layout, rarely about values."""
        return "_prims_common" in self.where


class CaptureGuards:
    """The capture's guards over batch, height and width, evaluated at concrete NCHW shapes.

    Args:
        guards: the relations that must hold.
        symbols: NCHW axis -> the sympy symbol of that input size (dynamic axes only).
        example: the NCHW shape the capture was traced at (every guard holds there).
    """

    def __init__(self, guards: Sequence[Guard], symbols: dict[int, Any], example: Shape | None = None) -> None:
        from segdeploy.export.torch_compat import size_predicate

        self.guards = list(guards)
        self.symbols = dict(symbols)
        self.example = example
        self._checks = [size_predicate(g.expr) for g in self.guards]
        self._failing: dict[tuple[int, ...], list[Guard]] = {}

    @classmethod
    def from_program(cls, program: Any, axes: dict[int, str]) -> CaptureGuards:
        """The guards of a dynamic capture (``axes``: the file input's axis -> ``batch``/``height``/``width``)."""
        import torch

        from segdeploy.export.torch_compat import shape_guards

        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        name = program.graph_signature.user_inputs[0]
        value = next(n for n in placeholders if n.name == name).meta["val"]
        nchw = {"batch": 0, "height": 2, "width": 3}
        symbols, example = {}, [1, 1, 1, 1]
        for axis, axis_name in axes.items():
            size = value.shape[axis]
            if isinstance(size, torch.SymInt) and size.node.expr.is_Symbol:
                symbols[nchw[axis_name]] = size.node.expr
                example[nchw[axis_name]] = int(size.node.hint) if size.node.hint is not None else 1
        recorded = shape_guards([n.meta["val"] for n in placeholders if "val" in n.meta])
        if not recorded or not symbols:
            return cls([], symbols)
        free = set(symbols.values())
        seen: dict[Any, Guard] = {}
        for expr, locations in recorded:
            names = expr.free_symbols
            if not names or not names <= free or type(expr).__name__ in ("Ne", "Unequality") or expr in seen:
                continue
            seen[expr] = Guard(expr, _where(locations))
        return cls(list(seen.values()), symbols, tuple(example))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ evaluation
    def failing(self, shape: Sequence[int]) -> list[Guard]:
        """The guards that do not hold at an NCHW ``shape`` (empty: the capture was traced for it)."""
        key = tuple(int(shape[axis]) for axis in sorted(self.symbols))
        if key not in self._failing:
            values = {symbol: int(shape[axis]) for axis, symbol in self.symbols.items()}
            failed = []
            for guard, check in zip(self.guards, self._checks):
                try:
                    holds = bool(check(values))
                except Exception:  # an expression that cannot be evaluated there: treat it as failing
                    holds = False
                if not holds:
                    failed.append(guard)
            self._failing[key] = failed
        return self._failing[key]

    def holds(self, shape: Sequence[int], ignore: frozenset[Guard] = frozenset()) -> bool:
        """Every guard but those in ``ignore`` holds at ``shape``."""
        return all(g in ignore for g in self.failing(shape))

    def refuted(self, passed: Sequence[Sequence[int]]) -> frozenset[Guard]:
        """The guards that fail at shapes where the file ran right: shown not to matter there."""
        return frozenset(g for shape in passed for g in self.failing(shape))

    def explain(self, shape: Sequence[int]) -> Guard | None:
        """The guard that best explains a failure at ``shape``: the first failing one made in the model's code."""
        failed = self.failing(shape)
        return next((g for g in failed if g.own), failed[0] if failed else None)

    @property
    def spatial(self) -> bool:
        """Height and width are both dynamic and something constrains them."""
        return bool(self.guards) and {2, 3} <= set(self.symbols)

    # ------------------------------------------------------------------ regions
    def side_region(
        self, trace: Shape, axis: int, multiple: int, low: int, ignore: frozenset[Guard] = frozenset()
    ) -> tuple[int, int | None] | None:
        """The run of sides around the traced one, on multiples of ``multiple`` from ``low``, where the guards hold.

        The other sides stay at the trace; guards in ``ignore`` do not count. Returns ``(lowest,
        highest)``; highest is None when the run reaches ``SCAN_FACTOR`` times the trace; None when
        the guards fail at the traced side itself.
        """
        base = list(self._scan_shape(trace))
        side = base[axis]
        cap = SCAN_FACTOR * max(side, 64)

        def ok(value: int) -> bool:
            base[axis] = value
            return self.holds(base, ignore)

        if side % multiple or not ok(side):
            return None
        lo = side
        while lo - multiple >= max(low, 1) and ok(lo - multiple):
            lo -= multiple
        hi = side
        while hi + multiple <= cap and ok(hi + multiple):
            hi += multiple
        return lo, None if hi + multiple > cap else hi

    def suspect_shapes(self, rule: Any, trace: Shape) -> list[Shape]:
        """Shapes the rule admits where a guard fails: just past each end of the region the guards allow.

        The side under test is paired with the smallest side the guards allow on the other axis, so
        a probe costs little and a failure there points at one side.
        """
        if not self.spatial or rule.fixed is not None:
            return []
        m = max(rule.multiple, 1)
        regions = {axis: self.side_region(trace, axis, m, rule.min_size) for axis in (2, 3)}
        if None in regions.values():
            return []
        shapes: list[Shape] = []
        for axis, other in ((2, 3), (3, 2)):
            lo, hi = regions[axis]  # type: ignore[misc]
            for side in ([hi + m] if hi is not None else []) + [lo - m]:
                shape = [trace[0], trace[1], 0, 0]
                shape[axis], shape[other] = side, regions[other][0]  # type: ignore[index]
                if rule.valid(side) and self.failing(self._scan_shape(shape)) and tuple(shape) not in shapes:
                    shapes.append(tuple(shape))  # type: ignore[arg-type]
        return shapes

    def unproven(self, rule: Any, trace: Shape) -> str | None:
        """A note for a file that will not be verified: where the capture assumed a size inside the rule."""
        suspects = self.suspect_shapes(rule, trace)
        if not suspects:
            return None
        from segdeploy.shapes import format_shape

        guard = self.explain(suspects[0])
        return (
            f"sizes not proven (no verification): the capture specialized on the input size at "
            f"{guard.text() if guard else '?'}, so the file may be wrong at sizes such as {format_shape(suspects[0])}"
        )

    def candidates(self, rule: Any, trace: Shape, ignore: frozenset[Guard] = frozenset()) -> list[Any]:
        """Narrower rules the guards allow, each admitting the trace: a range of sides, or a larger multiple.

        For each multiple of the rule's (up to 128) that divides the traced sides: the region of each
        side where the guards hold, combined (checked at its corners). A guard such as
        ``Mod(4 - Mod(h//4, 4), 4) <= 0`` (no padding to a window multiple needed) holds at every
        multiple of 16, where it gives an unbounded rule. Computed twice: with every guard but
        ``ignore`` (those runs refuted), and without torch's layout checks as well, which a
        contiguity check of a size-1 dimension can make fail everywhere but at the trace. Runs decide
        which of them is true.
        """
        if not self.spatial or rule.fixed is not None:
            return []
        found: list[Any] = []
        layout = frozenset(g for g in self.guards if g.layout)
        for skipped in (ignore, ignore | layout):
            for m in (v for v in _MULTIPLES if v % max(rule.multiple, 1) == 0):
                candidate = self._candidate(rule, trace, m, skipped)
                if candidate is not None and candidate not in found:
                    found.append(candidate)
        return found

    def _candidate(self, rule: Any, trace: Shape, m: int, ignore: frozenset[Guard]) -> Any:
        """``rule`` on multiples of ``m``, bounded to where the guards (but ``ignore``) hold; None if only the trace."""
        if trace[2] % m or trace[3] % m:
            return None
        regions = [self.side_region(trace, axis, m, rule.min_size, ignore) for axis in (2, 3)]
        if None in regions:
            return None
        low = _round_up(max(max(r[0] for r in regions), rule.min_size), m)  # type: ignore[index]
        highs = [r[1] for r in regions if r[1] is not None]  # type: ignore[index]
        if rule.max_size is not None:
            highs.append(rule.max_size // m * m)
        high = min(highs) if highs else None
        if high is not None and high <= low:
            return None  # only the traced size on this multiple
        top = high if high is not None else SCAN_FACTOR * max(trace[2], trace[3], 64) // m * m
        corners = [self._scan_shape((trace[0], trace[1], h, w)) for h in (low, top) for w in (low, top)]
        if not all(self.holds(s, ignore) for s in corners):
            return None
        return replace(rule, multiple=m, min_size=low, max_size=high)

    def _scan_shape(self, shape: Sequence[int]) -> Shape:
        """``shape`` at the capture's batch: a batch guard must not hide what the sides do."""
        n = self.example[0] if self.example is not None and 0 in self.symbols else shape[0]
        return (n, shape[1], shape[2], shape[3])


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


_FRAME = re.compile(r"([^()\s,]*?\.py)(?::|, line )(\d+) in (\w+)")


def _where(locations: Sequence[str]) -> str:
    """``file.py:line in function`` where a guard was added: the model's frame when torch recorded one."""
    for text in locations:
        match = _FRAME.search(text)
        if match:
            file = match.group(1).split("site-packages/")[-1]
            return f"{file}:{match.group(2)} in {match.group(3)}"
    return ""
