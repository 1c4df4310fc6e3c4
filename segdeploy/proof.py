"""Proving a file's size rule: runs of the written file at sizes spread over what the rule admits.

The float64 judgement (``segdeploy.verify``) runs at a few shapes, where it decides whether the file
computes the model within PyTorch's own float32 noise. A size rule promises much more: every height and
width it admits. So the file also runs, per side, well above the traced size (about 2x and 1.5x, each
paired with the rule's minimum on the other side: the minimum is run on both sides, the shapes are
non-square both ways and cost little), and where the capture's guards fail inside the rule
(``CaptureGuards.suspect_shapes``). The traced size itself is not run: it is the one size where the
capture is exact by construction (every guard holds there), and a full traced forward in PyTorch and
in ONNX Runtime would cost a quarter of verification. Those extra shapes are judged more cheaply
against PyTorch's float32 output, within a multiple of the noise the float64 shapes measured
(``compare_probe``). A rule whose runs fail is narrowed to what the runs and the guards support
(``narrowed_rule``): a range, a larger multiple, or the traced size alone; the caller then proves the
narrower rule by runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from segdeploy.artifact import OutputKind
from segdeploy.criteria import NOISE_MULTIPLE, ShapeComparison, labels, top2_margin
from segdeploy.shapes import Shape

PROBE_MULTIPLE = 20 * (NOISE_MULTIPLE + 1)
"""A probe passes within this multiple of the largest relative noise floor measured at the float64 shapes.

A correct file is within ``NOISE_MULTIPLE`` floors of float64 and PyTorch's float32 within one, so within
``NOISE_MULTIPLE + 1`` of each other at the probe's own floor; that floor is not measured, and floors vary
with the size: the zoo SegNet (calibrated test widths) measured 2.2e-6 relative at 33x35 and 2.4e-5 at
its traced 64x64, a correct file at 0.6-1.1 of each. The factor 20 covers that spread twice over and
keeps the limit near 1e-4 relative for such a model; sizes baked from the trace are off by 0.15 and more
(measured on adaptive pooling) or do not run.
"""

PROBE_CRITERION = "float32-probe"


def proof_shapes(
    trace_shape: Sequence[int], min_size: int = 1, size_multiple: int = 1, max_size: int | None = None
) -> list[Shape]:
    """The shapes that spread the rule: each side well above the trace, the other at the rule's minimum.

    Args:
        trace_shape: the NCHW shape the file was traced at.
        min_size, size_multiple, max_size: the rule (``max_size`` None: unbounded).

    Returns:
        Distinct NCHW shapes, all valid for the rule: tall (~2x the traced height by the minimum width)
        and wide (the minimum height by ~1.5x the traced width), the long side odd when the rule takes
        any size. Together about a fifth of the traced area at 512x512 with a minimum of 32.
    """
    _, c, h, w = (int(d) for d in trace_shape)
    m = max(size_multiple, 1)
    low = -(-max(min_size, 1) // m) * m
    high = None if max_size is None else max(max_size // m * m, low)

    def side(value: int, odd: bool = False) -> int:
        value = max(value // m * m, low)
        if odd and m == 1 and value % 2 == 0:
            value += 1
        return value if high is None else min(value, high)

    tall = (1, c, side(2 * h, odd=True), low)
    wide = (1, c, low, side(3 * w // 2, odd=True))
    return [tall] if wide == tall else [tall, wide]


def compare_probe(
    candidate: np.ndarray, r32: np.ndarray, floor_rel: float, kind: OutputKind, shape: Sequence[int]
) -> ShapeComparison:
    """Judge a probe: the candidate against PyTorch's float32 output, within ``PROBE_MULTIPLE`` floors.

    Args:
        candidate: the file's output (logits, probabilities, or a class map).
        r32: PyTorch's float32 output, in the same kind (logits for a class map).
        floor_rel: the largest relative noise floor (floor / max |output|) seen at the float64 shapes.
        kind: the output kind.
        shape: the input shape.
    """
    from segdeploy.criteria import mean_iou, probabilities

    reference = probabilities(r32) if kind is OutputKind.PROBS else r32
    ref = np.asarray(reference, dtype=np.float64)
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, float(np.finfo(np.float32).tiny))
    limit = PROBE_MULTIPLE * floor_rel * scale + float(np.finfo(np.float32).eps) * scale
    result = ShapeComparison(tuple(int(d) for d in shape), tuple(int(d) for d in candidate.shape), PROBE_CRITERION)
    expected = ref.shape if kind is not OutputKind.CLASSMAP else (ref.shape[0], *ref.shape[2:])
    if tuple(candidate.shape) != tuple(expected):
        result.passed = False
        result.error = result.max_rel_error = result.p99_rel_error = math.inf
        result.failed.append(f"output shape {tuple(candidate.shape)} differs from PyTorch's {tuple(expected)}")
        return result
    result.limit = limit
    if kind is not OutputKind.CLASSMAP:
        cand = np.asarray(candidate, dtype=np.float64)
        if not np.all(np.isfinite(cand)):
            result.error = math.inf
        else:
            diff = np.abs(cand - ref)
            result.error = float(diff.max()) if diff.size else 0.0
            result.p99_rel_error = float(np.percentile(diff, 99)) / scale if diff.size else 0.0
        result.max_rel_error = result.error / scale
    cand_labels = labels(candidate, kind)
    ref_labels = labels(ref, OutputKind.LOGITS if kind is OutputKind.CLASSMAP else kind)
    flips = cand_labels != ref_labels
    result.agreement = float(1.0 - flips.mean()) if flips.size else 1.0
    result.miou = mean_iou(cand_labels, ref_labels, max(ref.shape[1], 2))
    result.unexplained_flips = int((flips & (top2_margin(ref) > 2 * limit)).sum())
    if kind is not OutputKind.CLASSMAP and not result.error <= limit:
        result.failed.append(
            f"error {result.error:.3g} against PyTorch float32 > {PROBE_MULTIPLE:g}x the relative noise floor "
            f"{floor_rel:.3g} measured at the float64 shapes"
        )
    if result.unexplained_flips:
        result.failed.append(f"{result.unexplained_flips} pixels change class away from near-ties")
    result.passed = not result.failed
    return result


def narrowed_rule(
    rule: Any,
    trace: Shape,
    results: Sequence[ShapeComparison],
    guards: Any = None,
    failed: Sequence[Shape] = (),
    passed: Sequence[Shape] = (),
) -> Any:
    """The widest rule, among the narrowings the evidence suggests, that no failing run contradicts.

    Candidates: the rules the capture's guards allow (``CaptureGuards.candidates``: a range, or a
    larger multiple; a guard that fails where a run passed does not count), the rule bounded by the
    runs (a maximum below the failing shapes above the trace, a minimum above those below it), and
    the traced size alone. The widest that admits the traced size and none of the failing shapes
    wins (a guard's rule on a tie); the caller proves it with runs over its own plan.

    Args:
        rule: the ``SizeRule`` the runs tested.
        trace: the traced shape (it must stay valid).
        results: every shape's result (float64 and probes) of these runs.
        guards: the capture's ``CaptureGuards``, which explain a failure and propose narrowings (optional).
        failed: shapes that failed in earlier runs of wider rules (a narrowing never admits them again).
        passed: shapes that passed in earlier runs (with this run's, they refute guards).

    Returns:
        ``rule`` itself when nothing failed, when it is already the traced size alone, or when a
        failure says nothing about sizes (no signal to judge); else the narrower rule, its
        ``narrowed`` naming the failing shape and, when a guard fails there, the model's line that
        made it.
    """
    from segdeploy.criteria import NO_SIGNAL

    failing = [r for r in results if not r.passed]
    if not failing or rule.fixed is not None or any(r.criterion == NO_SIGNAL for r in failing):
        return rule
    bad = list(dict.fromkeys([*failed, *(tuple(r.shape) for r in failing)]))
    fixed = replace(rule, fixed=(trace[2], trace[3]))
    options = []
    if guards is not None:
        good = [*passed, *(tuple(r.shape) for r in results if r.passed)]
        options = list(guards.candidates(rule, trace, guards.refuted(good)))
    bounded = _bounded_by_runs(rule, trace, bad)
    if bounded is not None:
        options.append(bounded)
    sides = _SCAN * max(trace[2], trace[3], 64)
    admitted = [o for o in options if o.valid(trace[2]) and o.valid(trace[3]) and not any(_admits(o, s) for s in bad)]
    chosen = max(admitted, key=lambda o: _width(o, sides), default=fixed)  # max() keeps the first of equals
    excluded = next((r for r in failing if not _admits(chosen, r.shape)), failing[0])
    return replace(chosen, narrowed=_why(excluded, guards))


_SCAN = 4  # rules are compared by the sides they admit up to this many times the traced side


def _admits(rule: Any, shape: Sequence[int]) -> bool:
    return (
        rule.valid(int(shape[2]))
        and rule.valid(int(shape[3]))
        and (rule.fixed is None or (int(shape[2]), int(shape[3])) == tuple(rule.fixed))
    )


def _width(rule: Any, sides: int) -> int:
    """How many sides up to ``sides`` the rule admits (1 for a fixed size)."""
    if rule.fixed is not None:
        return 1
    top = min(sides, rule.max_size) if rule.max_size is not None else sides
    m = max(rule.multiple, 1)
    return max(top // m - (-(-rule.min_size // m)) + 1, 0)


def _bounded_by_runs(rule: Any, trace: Shape, bad: Sequence[Shape]) -> Any:
    """``rule`` with a maximum below the failing shapes that reach above the trace and a minimum above the rest.

    None when that leaves nothing but the traced size, or no bound excludes them.
    """
    if rule.fixed is not None:
        return None
    m = max(rule.multiple, 1)
    above = [max(s[2], s[3]) for s in bad if max(s[2], s[3]) > max(trace[2], trace[3])]
    high = (min(above) - 1) // m * m if above else rule.max_size
    below = [min(s[2], s[3]) for s in bad if high is None or max(s[2], s[3]) <= high]
    low = _round_up(max(below) + 1, m) if below else rule.min_size
    low = max(low, rule.min_size)
    if high is not None and high <= low or low > min(trace[2], trace[3]):
        return None
    return replace(rule, min_size=low, max_size=high)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _why(result: ShapeComparison, guards: Any) -> str:
    """The failing shape and its first reason; the capture's guard that fails there, when there is one."""
    from segdeploy.shapes import format_shape

    reason = (result.failed[0] if result.failed else "failed")[:160]
    fails = f"the file fails at {format_shape(result.shape)}: {reason}"
    guard = guards.explain(result.shape) if guards is not None else None
    if guard is None:
        return fails
    return f"the capture specialized on the input size at {guard.text()}, and {fails}"
