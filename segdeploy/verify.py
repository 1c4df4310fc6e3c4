"""Parity of an exported model with PyTorch, at several valid shapes: ``verify`` and ``verify_file``.

Each shape's input goes to the candidate (ONNX Runtime or TensorRT) and to the PyTorch
reference in float32 and float64 (``segdeploy.reference``); ``segdeploy.criteria`` judges
the candidate against the model's own float32 noise (FP32) or fixed bounds (FP16). The
report shows, per shape, the error, the noise floor and their ratio.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.artifact import Metadata, OutputKind, Precision, parse_precision
from segdeploy.criteria import (
    FALLBACK_FP32,
    NO_SIGNAL,
    ShapeComparison,
    Thresholds,
    cannot_judge,
    check_pool_inputs,
    compare,
    json_float,
    no_signal,
    probabilities,
    ratio_text,
    thresholds_for,
)
from segdeploy.errors import UserInputError
from segdeploy.proof import PROBE_CRITERION, PROBE_MULTIPLE, compare_probe
from segdeploy.shapes import Shape, check_shape, format_shape

if TYPE_CHECKING:
    from segdeploy.runtime.base import Runner


def verification_shapes(
    trace_shape: Sequence[int],
    min_size: int = 1,
    size_multiple: int = 1,
    static: bool = False,
    max_size: int | None = None,
) -> list[Shape]:
    """The traced shape, a smaller odd-sized one and a batch-2 one, all valid for the model.

    The extra shapes are smaller than the trace and differ from it in every dynamic dimension: an odd,
    non-square size of about half the traced sides (the nearest valid size when the model takes only
    multiples) and batch 2 at about a quarter by three eighths, together about half the traced work.
    A static file is checked at its one shape.
    """
    n, c, h, w = (int(d) for d in check_shape(tuple(trace_shape)))  # type: ignore[arg-type]
    if static:
        return [(n, c, h, w)]
    m = max(size_multiple, 1)
    low = -(-max(min_size, 1) // m) * m
    high = None if max_size is None else max(max_size // m * m, low)

    def valid(side: int, trace: int, odd: bool) -> int:
        """A valid side near ``side`` and different from the traced one: odd when any size goes."""
        side = max(side // m * m, low)
        if odd and m == 1 and side % 2 == 0:
            side += 1
        if high is not None:
            side = min(side, high)
        if side == trace:
            side = side - m if high is not None and side + m > high and side - m >= low else side + m
        return side

    odd = (1, c, valid(h // 2 + 1, h, True), valid(w // 2 + 3, w, True))
    if odd[3] == odd[2]:
        bigger = odd[3] + max(m, 2)
        odd = (1, c, odd[2], bigger if high is None or bigger <= high else max(odd[3] - max(m, 2), low))
    batch2 = (2, c, valid(h // 4, -1, False), valid((3 * w) // 8, -1, False))
    shapes: list[Shape] = []
    for shape in ((n, c, h, w), odd, batch2):
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def verification_plan(
    trace_shape: Sequence[int],
    min_size: int = 1,
    size_multiple: int = 1,
    max_size: int | None = None,
    dynamic: Sequence[str] = ("batch", "height", "width"),
) -> tuple[list[Shape], list[Shape]]:
    """The shapes judged against float64, and the probes judged against PyTorch's float32 (``segdeploy.proof``).

    The float64 judgement runs where it decides, away from the traced shape: the odd-sized and batch-2
    shapes of ``verification_shapes``. The probes (``proof_shapes``) put each side well above the
    trace with the rule's minimum on the other side. The traced shape itself is not run: it is the one
    size the capture cannot get wrong. A file of fixed height and width is judged in float64 at its one
    size, plus batch 2 when its batch is dynamic.

    Args:
        trace_shape, min_size, size_multiple, max_size: the traced shape and the file's size rule.
        dynamic: the file's dynamic input axes (``Metadata.dynamic_axes``).

    Returns:
        ``(float64_shapes, probe_shapes)``.
    """
    from segdeploy.proof import proof_shapes

    n, c, h, w = (int(d) for d in trace_shape)
    if "height" not in dynamic or "width" not in dynamic:
        return [(n, c, h, w)], ([(2, c, h, w)] if "batch" in dynamic and n != 2 else [])
    shapes = verification_shapes(trace_shape, min_size, size_multiple, False, max_size)
    exact = [s for s in shapes if s != shapes[0]] or shapes[:1]
    probes = [s for s in proof_shapes(shapes[0], min_size, size_multiple, max_size) if s not in shapes]
    return exact, probes


@dataclass
class VerificationReport:
    """Parity results of one candidate against the PyTorch reference over several shapes."""

    candidate: str
    reference: str
    precision: str
    criteria: Thresholds
    results: list[ShapeComparison]
    notes: list[str] = field(default_factory=list)
    sizes: str | None = None  # the sizes the file promises, in words (Metadata.describe_sizes)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def judged(self) -> bool:
        """Every shape's reference carried a signal to judge by (see ``criteria.no_signal``)."""
        return all(r.criterion != NO_SIGNAL for r in self.results)

    def worst(self) -> str:
        """One line: the verdict, the worst shape's numbers and the criterion."""
        if not self.results:
            return "no shapes verified"
        verdict = "passed" if self.passed else "FAILED"
        failing = sorted((r for r in self.results if not r.passed), key=lambda r: r.criterion == NO_SIGNAL)
        worst = failing[0] if failing else max(self.results, key=lambda r: r.ratio or r.max_rel_error)
        where = f" at {format_shape(worst.shape)}" if failing else f", worst at {format_shape(worst.shape)}"
        if worst.criterion == NO_SIGNAL:
            return f"CANNOT VERIFY at {format_shape(worst.shape)}: {worst.failed[0].removeprefix('cannot judge: ')}"
        if worst.ratio is not None and worst.criterion == "noise-floor":
            numbers = (
                f"error {worst.error:.3g} = {ratio_text(worst)} noise floor {worst.floor:.3g} "
                f"(limit {self.criteria.noise_multiple:g}x)"
            )
        else:
            numbers = f"max rel {worst.max_rel_error:.3g}, p99 rel {worst.p99_rel_error:.3g}"
        why = f": {'; '.join(worst.failed)}" if worst.failed else ""
        return (
            f"{verdict}{where} [{self.criteria.criterion}, {self.precision}] {numbers}, "
            f"agreement {worst.agreement:.4%}, mIoU {worst.miou:.4f}{why}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "reference": self.reference,
            "precision": self.precision,
            "passed": self.passed,
            "criteria": {k: json_float(v) for k, v in asdict(self.criteria).items()},
            "summary": self.worst(),
            "sizes": self.sizes,
            "notes": list(self.notes),
            "results": [r.to_dict() for r in self.results],
        }


def verify(
    candidate: str | os.PathLike[str] | Runner,
    reference: Any,
    *,
    shapes: Sequence[Sequence[int]],
    metadata: Metadata | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    probe_shapes: Sequence[Sequence[int]] = (),
) -> VerificationReport:
    """Run candidate and PyTorch reference on the same inputs and judge the candidate per shape.

    Args:
        candidate: a ``.onnx``/``.engine`` path or a ``Runner``.
        reference: the PyTorch network (``nn.Module`` taking normalized float NCHW).
        shapes: NCHW model shapes (see ``verification_shapes``).
        metadata: the candidate's segdeploy metadata (precision, pre-processing, output kind,
            unpooling inputs); default: read from an ONNX candidate, else plain FP32 logits.
        seed: seed of the random inputs.
        progress: optional callable receiving one line per shape.
        probe_shapes: more shapes, judged against PyTorch's float32 output only, within a multiple of
            the relative noise floor measured at ``shapes`` (``segdeploy.proof.compare_probe``).

    Returns:
        A ``VerificationReport``; check ``.passed`` (nothing is raised on failure).

    Raises:
        UserInputError: bad shapes or candidate file, or a model that raises.
    """
    from segdeploy.reference import Reference
    from segdeploy.runtime import open_runner

    if not shapes:
        raise UserInputError("verify needs at least one input shape")
    checked = [check_shape(tuple(s)) for s in shapes]  # type: ignore[arg-type]
    probes = [check_shape(tuple(s)) for s in probe_shapes if tuple(s) not in checked]  # type: ignore[arg-type]
    if metadata is None:
        metadata = _candidate_metadata(candidate)
    runner = open_runner(candidate, precision=metadata.precision)
    windows = [k for _, k in metadata.unpool_inputs]
    names = [name for name, _ in metadata.unpool_inputs]
    ref = Reference(reference, metadata.preprocessing, windows)
    rng = np.random.default_rng(seed)
    results, notes = [], []
    forced = bool(names) and runner.runtime.value == "ort" and metadata.precision is Precision.FP32
    if forced:
        runner.expose(names)  # type: ignore[attr-defined]  # one session that also returns the pooling inputs
    with runner:
        thresholds = thresholds_for(metadata.precision, index_unpooling=metadata.index_unpooling and not forced)
        floors: list[float] = []
        for shape in [*checked, *probes]:
            probe = shape in probes and shape not in checked
            if progress:
                what = "probing" if probe else "verifying"
                progress(f"{what} {runner.label} against PyTorch at {format_shape(shape)}")
            raw = runner.input_spec.random_batch(shape, rng)
            try:
                outs = runner.infer_outputs(raw, names) if forced else [runner.infer(raw)]
            except UserInputError:
                raise
            except Exception as exc:  # the file itself fails at this shape (e.g. a pooling baked at another size)
                results.append(_crashed(shape, exc, PROBE_CRITERION if probe else "runtime error"))
                continue
            run = ref.run(raw, outs[1:] if forced else None, float64=not probe)
            if probe and thresholds.criterion == "noise-floor":
                floor = max(floors) if floors else FALLBACK_FP32.max_rel_error / PROBE_MULTIPLE  # type: ignore[operator]
                results.append(compare_probe(outs[0], run.out32, floor, metadata.output, shape))
                continue
            criteria = thresholds if run.out64 is not None or thresholds.criterion != "noise-floor" else FALLBACK_FP32
            if run.float64_error and not notes:
                notes.append(f"no float64 reference ({run.float64_error}): {FALLBACK_FP32.note}")
            results.append(_compare_run(outs[0], run, criteria, metadata.output, shape))
            reason = no_signal(run.out32, run.out64)
            if reason:
                cannot_judge(results[-1], reason)
                continue
            if run.out64 is not None:
                floors.append(_relative_floor(run))
            if forced and run.out64 is not None:
                check_pool_inputs(results[-1], outs[1:], run.pool32, run.pool64, windows)
    if forced:
        notes.append("index unpooling: the reference unpools with the candidate's window choices")
    return VerificationReport(
        _describe(candidate, runner),
        f"torch:{type(reference).__name__}",
        metadata.precision.value,
        thresholds,
        results,
        notes,
        metadata.describe_sizes() if metadata.trace_shape is not None else None,
    )


def _relative_floor(run: Any) -> float:
    """PyTorch's own float32 error relative to the output's scale: max |r32 - r64| / max |r64|."""
    r64 = np.asarray(run.out64, dtype=np.float64)
    scale = max(float(np.abs(r64).max()) if r64.size else 0.0, float(np.finfo(np.float32).tiny))
    return float(np.abs(np.asarray(run.out32, np.float64) - r64).max()) / scale if r64.size else 0.0


def _crashed(shape: Shape, exc: BaseException, criterion: str = "runtime error") -> ShapeComparison:
    from segdeploy.errors import first_line

    return ShapeComparison(
        tuple(shape),
        (),
        criterion,
        error=math.inf,
        max_rel_error=math.inf,
        p99_rel_error=math.inf,
        agreement=0.0,
        miou=0.0,
        passed=False,
        failed=[f"the file fails to run at this shape: {type(exc).__name__}: {first_line(exc)[:200]}"],
    )


def _compare_run(
    candidate: np.ndarray, run: Any, thresholds: Thresholds, kind: OutputKind, shape: Shape
) -> ShapeComparison:
    if kind is OutputKind.CLASSMAP:
        return compare(
            candidate,
            run.out32,
            run.out64,
            thresholds,
            kind=kind,
            scores=(run.out32, run.out64 if run.out64 is not None else run.out32),
            shape=shape,
        )
    if kind is OutputKind.PROBS:
        p64 = probabilities(run.out64) if run.out64 is not None else None
        return compare(candidate, probabilities(run.out32), p64, thresholds, kind=kind, shape=shape)
    return compare(candidate, run.out32, run.out64, thresholds, kind=kind, shape=shape)


def _candidate_metadata(candidate: Any) -> Metadata:
    from segdeploy.artifact import read_metadata

    if isinstance(candidate, (str, os.PathLike)) and str(candidate).lower().endswith(".onnx"):
        return read_metadata(candidate)
    precision = getattr(candidate, "precision", Precision.FP32)
    return Metadata(precision=parse_precision(precision))


def _describe(source: Any, runner: Runner) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"{runner.label}:{os.fspath(source)}"
    return runner.label


def verify_file(
    path: str | os.PathLike[str],
    model: str | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    config: dict[str, Any] | None = None,
    shapes: Sequence[Sequence[int]] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> VerificationReport:
    """Verify an exported ``.onnx`` / ``.engine`` against the PyTorch model it came from.

    What is not given is read from the file's segdeploy metadata (for an engine: from the ONNX its
    sidecar names): the model (zoo name or ``file.py:factory``) and its options, classes, channels,
    trace shape, valid sizes, precision and I/O formats. A static file is verified at its one shape.

    Raises:
        UserInputError: bad file, missing information (named), or a model exported from a Python object.
    """
    from pathlib import Path

    from segdeploy.artifact import is_engine_path, read_metadata
    from segdeploy.models.loading import rebuild_model

    file = Path(path)
    suffix = file.suffix.lower()
    if suffix != ".onnx" and not is_engine_path(file):
        raise UserInputError(f"{file}: unknown model file type {suffix!r}; expected .onnx, .engine or .plan")
    if suffix == ".onnx":
        metadata = read_metadata(file)
    elif not file.is_file() or file.stat().st_size == 0:
        raise UserInputError(f"{file} does not exist or is empty; expected a TensorRT engine")
    else:
        metadata = _engine_metadata(file)
    loaded = rebuild_model(
        metadata, where=str(file), model=model, weights=weights, num_classes=num_classes,
        in_channels=in_channels, config=config, file=file,
    )  # fmt: skip
    probes: list[Shape] = []
    if not shapes:
        if metadata.trace_shape is None:
            raise UserInputError(f"{file} has no trace_shape metadata: pass --shape NxCxHxW (repeatable)")
        shapes, probes = verification_plan(
            metadata.trace_shape,
            max(metadata.min_size, loaded.min_size),
            metadata.size_multiple,
            metadata.max_size,
            metadata.dynamic_axes,
        )
    checked = [check_shape(tuple(s), in_channels=loaded.in_channels, min_size=loaded.min_size) for s in shapes]  # type: ignore[arg-type]
    for shape in checked:
        metadata.check_size(shape)
    report = verify(
        file, loaded.module, shapes=checked, metadata=metadata, seed=seed, progress=progress, probe_shapes=probes
    )
    report.notes.extend(loaded.notes)
    return report


def _engine_metadata(engine: Any) -> Metadata:
    """An engine's metadata: that of the ONNX its sidecar names when the file is still there, else its precision."""
    from pathlib import Path

    from segdeploy.artifact import read_metadata
    from segdeploy.fileio import sha256_file
    from segdeploy.runtime.sidecar import EngineSidecar

    sidecar = EngineSidecar.read(engine)
    if sidecar is None:
        return Metadata()
    onnx_path = Path(sidecar.onnx_path)
    if onnx_path.is_file() and sidecar.onnx_sha256 == sha256_file(onnx_path):
        metadata = read_metadata(onnx_path)
    else:
        metadata = Metadata()
    metadata.precision = sidecar.precision
    return metadata
