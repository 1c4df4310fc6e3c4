"""Judging one output against PyTorch: the metrics, and the criteria per precision.

At each input shape the PyTorch model runs in float32 and, from a float64 copy
of its weights, in float64 (``segdeploy.reference``). With ``r32``/``r64`` those
outputs and ``c`` the candidate's (ONNX Runtime or TensorRT):

- ``floor`` = max |r32 - r64|: how far PyTorch's own float32 result is from
  the exact function, for this model, these weights, this input.
- ``error`` = max |c - r64|; ``ratio`` = error / floor.
- An FP32 candidate passes when ``error <= NOISE_MULTIPLE * floor + abs_term``
  (``abs_term``, one float32 ulp of the output's scale, keeps a limit for outputs without noise).
  The multiple was chosen by measurement (docs/verification.md): correct files
  of every zoo architecture sit at 0.4-1.4x their floor, wrong ones at tens to
  thousands.
- Argmax disagreements are then confined to near-ties: a pixel can only flip
  where the float64 top-2 margin is at most twice the allowed error. The report
  counts flips outside that band (``unexplained_flips``); for a class-map output,
  where no error can be measured, that count is the criterion.
- Index unpooling: the reference follows the candidate's window choices, and the
  candidate's pooling inputs must be within the same multiple of their own floor
  (which bounds every flipped window to a near-tie). Engines that do not expose
  intermediate tensors (TensorRT) are judged by agreement and p99 instead.
- FP16 and INT8 files keep fixed criteria measured on trained models
  (``thresholds_for``), against the float32 reference.
- A non-finite candidate makes every error infinite, so it fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from segdeploy.artifact import Choice, OutputKind, Precision, parse_precision
from segdeploy.errors import UserInputError, VerificationError
from segdeploy.shapes import format_shape

NOISE_MULTIPLE = 4.0
"""An FP32 file passes when its error against float64 is within this multiple of PyTorch's own float32 error."""

_ULP32 = float(np.finfo(np.float32).eps)


class Criterion(Choice):
    """How a candidate is judged (the module docstring defines each)."""

    NOISE_FLOOR = "noise-floor"
    RELATIVE = "relative"
    AGREEMENT_P99 = "agreement+p99"
    METRICS = "metrics"  # measured, not judged


@dataclass(frozen=True)
class Thresholds:
    """Pass criteria; a None bound is not checked.

    Attributes:
        criterion: ``NOISE_FLOOR``, ``RELATIVE`` (fixed relative error and agreement) or
            ``AGREEMENT_P99`` (agreement and a high error percentile).
        noise_multiple: for ``noise-floor``: the allowed error in units of the floor.
        max_rel_error, p99_rel_error: fixed bounds on the error divided by the reference's max |value|.
        min_agreement: lower bound on argmax agreement.
        note: why these numbers.
    """

    criterion: Criterion
    noise_multiple: float | None = None
    max_rel_error: float | None = None
    p99_rel_error: float | None = None
    min_agreement: float | None = None
    note: str = ""


def thresholds_for(precision: Precision | str = Precision.FP32, index_unpooling: bool = False) -> Thresholds:
    """The pass criteria of a precision (see the module docstring and docs/verification.md).

    Args:
        precision: the candidate's precision.
        index_unpooling: the model unpools by max-pool indices and its window choices cannot be read.

    Raises:
        UserInputError: unknown precision.
    """
    precision = parse_precision(precision)
    if precision is Precision.FP32 and not index_unpooling:
        return Thresholds(
            Criterion.NOISE_FLOOR,
            noise_multiple=NOISE_MULTIPLE,
            note=f"FP32: error vs float64 <= {NOISE_MULTIPLE:g}x PyTorch's own float32 error",
        )
    if precision is Precision.FP32:
        # A runtime's window choices unseen, a flipped near-tie window moves a decoder value: measured on the
        # stock SegNet export with BatchNorm-calibrated weights, agreement 0.995-0.9999 and p99 < 9e-3;
        # a wrong tie rule scores 0.34-0.52.
        return Thresholds(
            Criterion.AGREEMENT_P99,
            p99_rel_error=1e-2,
            min_agreement=0.99,
            note="index unpooling without the engine's window choices: agreement and p99 error",
        )
    if precision is Precision.FP16 and not index_unpooling:
        # Tiny zoo models trained on segdeploy.data shapes, ONNX Runtime CPU: worst max relative error 5.0e-3,
        # worst agreement 0.99979, mIoU drift <= 5.5e-4 (benchmarks/results/fp16_drift.md).
        return Thresholds(
            Criterion.RELATIVE,
            max_rel_error=1e-2,
            min_agreement=0.99,
            note="FP16: relative error <= 1e-2 (measured <= 5e-3 on trained tiny models), agreement >= 99%",
        )
    if precision is Precision.FP16:
        # FP16 moves a trained SegNet's window choices at near-ties, and where one flips the decoder puts a value
        # elsewhere: judged by agreement and p99. The measurements and the margin these bounds keep are in
        # docs/int8.md ("What the FP16 thresholds should become"), from benchmarks/results/precision.md.
        return Thresholds(
            Criterion.AGREEMENT_P99,
            p99_rel_error=0.1,
            min_agreement=0.98,
            note="FP16 with index unpooling: agreement >= 98% and p99 error <= 0.1 "
            "(margin over a trained SegNet: docs/int8.md)",
        )
    if precision in (Precision.INT8, Precision.INT8_FP16) and not index_unpooling:
        # benchmarks/precision.py, every zoo model trained past all-background, ONNX Runtime CPU, on the noise inputs
        # verify feeds, worst over the verification shapes: good INT8 files reach p99 relative error <= 0.19
        # (DeepLab v3) and agreement >= 0.874 (DeepLab v2: noise leaves the calibrated ranges); the same quantizer
        # calibrated on unnormalised pixels scores p99 >= 0.265 on every model. The p99 separates them; agreement
        # does not (a badly calibrated DeepLab v1 keeps 0.915), so its floor only guards good files' margin.
        return Thresholds(
            Criterion.AGREEMENT_P99,
            p99_rel_error=0.25,
            min_agreement=0.8,
            note="INT8: agreement >= 80% and p99 error <= 0.25 (good files measured >= 0.874 and "
            "<= 0.19, badly calibrated ones >= 0.265)",
        )
    if precision in (Precision.INT8, Precision.INT8_FP16):
        # The zoo SegNet: INT8 moves 1.7-2.5% of its unpooling window choices; agreement with FP32 0.90-0.95 and
        # p99 up to 0.58 on the inputs verify feeds. Bad placements and calibrations score alike, so this is a floor
        # against broken files only (1.4x over the worst good file); a bad placement is lint's job (qdq-unpool).
        return Thresholds(
            Criterion.AGREEMENT_P99,
            p99_rel_error=0.8,
            min_agreement=0.8,
            note="INT8 with index unpooling: agreement >= 80% and p99 error <= 0.8, a floor against "
            "broken files (good ones measured 0.90-0.95 and <= 0.58)",
        )
    raise UserInputError(f"no verification criteria for precision {precision.value}")


_METRICS_ONLY = Thresholds(Criterion.METRICS, note="measured, not judged")

NO_SIGNAL = "no signal"
"""The criterion of a shape whose reference output carries nothing to judge (``no_signal``)."""

FALLBACK_FP32 = Thresholds(
    Criterion.RELATIVE,
    max_rel_error=1e-4,
    min_agreement=0.9999,
    note="the model cannot run in float64: fixed FP32 rule, relative error <= 1e-4",
)


@dataclass
class ShapeComparison:
    """Metrics of one input shape (definitions in the module docstring)."""

    shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    criterion: Criterion
    error: float = 0.0
    floor: float | None = None
    limit: float | None = None
    max_rel_error: float = 0.0
    p99_rel_error: float = 0.0
    agreement: float = 1.0
    unexplained_flips: int = 0
    miou: float = 1.0
    windows_flipped: int | None = None
    pool_ratio: float | None = None
    passed: bool = True
    failed: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        """error / floor; None without a floor."""
        if self.floor is None:
            return None
        return self.error / self.floor if self.floor > 0 else (0.0 if self.error == 0 else math.inf)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = format_shape(self.shape) if self.shape else ""
        data["output_shape"] = format_shape(self.output_shape)
        data["ratio"] = self.ratio
        return {k: json_float(v) for k, v in data.items()}


def labels(output: np.ndarray, kind: OutputKind = OutputKind.LOGITS) -> np.ndarray:
    """Class map of an output: argmax over classes; for one class, ``logit > 0`` (``prob > 0.5``)."""
    if kind is OutputKind.CLASSMAP:
        return output.astype(np.int64)
    if output.shape[1] == 1:
        return (output[:, 0] > (0.5 if kind is OutputKind.PROBS else 0.0)).astype(np.int64)
    return np.argmax(output, axis=1)


def top2_margin(output: np.ndarray) -> np.ndarray:
    """Per pixel, how far the winning score is from a change of label."""
    if output.shape[1] == 1:
        return np.abs(output[:, 0])
    top = np.sort(output, axis=1)
    return top[:, -1] - top[:, -2]


def probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax over classes (sigmoid for one class), as the ``probs`` output computes."""
    if logits.shape[1] == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def mean_iou(candidate_labels: np.ndarray, reference_labels: np.ndarray, num_classes: int) -> float:
    """Mean IoU between two label maps over the classes present in either (1.0 for two empty maps)."""
    a = candidate_labels.astype(np.int64).ravel()
    b = reference_labels.astype(np.int64).ravel()
    size = max(num_classes, int(a.max(initial=0)) + 1, int(b.max(initial=0)) + 1)
    confusion = np.bincount(b * size + a, minlength=size * size).reshape(size, size)
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - intersection
    present = union > 0
    return float(np.mean(intersection[present] / union[present])) if present.any() else 1.0


def compare(
    candidate: np.ndarray,
    r32: np.ndarray,
    r64: np.ndarray | None = None,
    thresholds: Thresholds | None = None,
    *,
    kind: OutputKind = OutputKind.LOGITS,
    scores: tuple[np.ndarray, np.ndarray] | None = None,
    shape: Sequence[int] = (),
) -> ShapeComparison:
    """Compare one candidate output with the float32 and float64 reference outputs.

    Args:
        candidate: the candidate's output (logits, probs, or a class map ``[N, H, W]``).
        r32, r64: the reference in float32 and float64, in the same kind as ``candidate``
            (for a class map: the reference logits, whose labels are compared).
        thresholds: the criteria (``noise-floor`` needs ``r64``); None measures without judging.
        kind: what the output is.
        scores: for a class map, the float32/float64 logits whose margins decide near-ties.
        shape: the input shape, recorded in the result.

    Raises:
        VerificationError: the outputs differ in shape.
    """
    reference = r64 if r64 is not None else r32
    expected_shape = reference.shape if kind is not OutputKind.CLASSMAP else (reference.shape[0], *reference.shape[2:])
    if tuple(candidate.shape) != tuple(expected_shape):
        raise VerificationError(
            f"output shape {format_shape(candidate.shape)} differs from the reference's {format_shape(expected_shape)}"
            + (f" at input {format_shape(tuple(shape))}" if shape else "")
        )
    thresholds = thresholds or _METRICS_ONLY
    result = ShapeComparison(tuple(int(d) for d in shape), tuple(int(d) for d in candidate.shape), thresholds.criterion)
    ref = np.asarray(reference, dtype=np.float64)
    if kind is not OutputKind.CLASSMAP:
        _errors(result, np.asarray(candidate, dtype=np.float64), np.asarray(r32, np.float64), r64, ref)
    s32, s64 = scores if scores is not None else (r32, reference)
    result.limit = _limit(
        result, thresholds, np.asarray(s32, np.float64), None if r64 is None else np.asarray(s64, np.float64)
    )
    cand_labels = labels(candidate, kind)
    ref_labels = labels(np.asarray(s64, np.float64), OutputKind.LOGITS if kind is OutputKind.CLASSMAP else kind)
    flips = cand_labels != ref_labels
    result.agreement = float(1.0 - flips.mean()) if flips.size else 1.0
    num_classes = max(ref.shape[1] if kind is not OutputKind.CLASSMAP else 2, 2)
    result.miou = mean_iou(cand_labels, ref_labels, num_classes)
    if result.limit is not None:
        # a change of label needs the top-2 margin within twice the allowed error
        result.unexplained_flips = int((flips & (top2_margin(np.asarray(s64, np.float64)) > 2 * result.limit)).sum())
    _judge(result, thresholds, kind)
    return result


def no_signal(r32: np.ndarray, r64: np.ndarray | None) -> str | None:
    """Why the reference output cannot judge a candidate, or None when it can.

    A constant output (every value equal, in float32 or float64) is matched by any file that outputs
    that constant; an output below float32's normal range (e.g. 1e-50 in float64 from untouched
    BatchNorm statistics) is zero or denormal in float32, where no error or class can be measured.
    """
    if not np.issubdtype(np.asarray(r32).dtype, np.floating):
        return None  # a class map (a file as the reference): one class everywhere is a legitimate answer
    reference = np.asarray(r64 if r64 is not None else r32, dtype=np.float64)
    if not reference.size or not np.all(np.isfinite(reference)):
        return None  # non-finite references are the candidate comparison's business
    peak = float(np.abs(reference).max())
    if peak == 0:
        return "the PyTorch output is zero everywhere: a dead network (uncalibrated BatchNorm?) gives nothing to judge"
    if peak < float(np.finfo(np.float32).tiny):
        return (
            f"the PyTorch output carries no signal (max |x| {peak:.3g}, below float32's normal range): "
            "uncalibrated BatchNorm or untrained weights?"
        )
    for out in (r32, r64):
        if out is not None and float(np.max(out)) == float(np.min(out)):
            return (
                f"the PyTorch output is constant (every value {float(np.max(out)):.6g}): it does not depend "
                "on the input, so any file that outputs that constant would pass"
            )
    return None


def cannot_judge(result: ShapeComparison, reason: str) -> ShapeComparison:
    """``result`` (its metrics kept) marked failed for want of a signal: ``reason`` comes from ``no_signal``."""
    result.criterion, result.passed, result.failed = NO_SIGNAL, False, [f"cannot judge: {reason}"]
    return result


def _errors(
    result: ShapeComparison, cand: np.ndarray, r32: np.ndarray, r64: np.ndarray | None, ref: np.ndarray
) -> None:
    scale = max(float(np.abs(ref).max()) if ref.size else 0.0, float(np.finfo(np.float32).tiny))
    if not np.all(np.isfinite(cand)):
        result.error = result.max_rel_error = result.p99_rel_error = math.inf
    else:
        diff = np.abs(cand - ref)
        result.error = float(diff.max()) if diff.size else 0.0
        result.max_rel_error = result.error / scale
        result.p99_rel_error = float(np.percentile(diff, 99)) / scale if diff.size else 0.0
    if r64 is not None:
        result.floor = float(np.abs(r32 - np.asarray(r64, np.float64)).max()) if r32.size else 0.0


def _limit(result: ShapeComparison, thresholds: Thresholds, s32: np.ndarray, s64: np.ndarray | None) -> float | None:
    if thresholds.criterion is not Criterion.NOISE_FLOOR or s64 is None:
        return None
    floor = result.floor if result.floor is not None else float(np.abs(s32 - s64).max())
    if result.floor is None:  # class maps: the floor of the scores that decide them
        result.floor = floor
    return thresholds.noise_multiple * floor + _abs_term(s64)  # type: ignore[operator]


def _abs_term(reference: np.ndarray) -> float:
    """One float32 ulp of the reference's scale: what is left of the limit when the floor is 0 (all-zero outputs)."""
    return _ULP32 * (float(np.abs(reference).max()) if reference.size else 0.0) + float(np.finfo(np.float32).tiny)


def _judge(result: ShapeComparison, t: Thresholds, kind: OutputKind) -> None:
    failed = result.failed
    if t.criterion is Criterion.NOISE_FLOOR:
        if kind is not OutputKind.CLASSMAP and not result.error <= result.limit:  # type: ignore[operator]
            failed.append(
                f"error {result.error:.3g} is {ratio_text(result)} the noise floor {result.floor:.3g} "
                f"(limit {t.noise_multiple:g}x)"
            )
        if result.unexplained_flips:
            failed.append(f"{result.unexplained_flips} pixels change class away from near-ties")
    if t.max_rel_error is not None and not result.max_rel_error <= t.max_rel_error:
        failed.append(f"max rel error {result.max_rel_error:.3g} > {t.max_rel_error:g}")
    if t.p99_rel_error is not None and not result.p99_rel_error <= t.p99_rel_error:
        failed.append(f"p99 rel error {result.p99_rel_error:.3g} > {t.p99_rel_error:g}")
    if t.min_agreement is not None and not result.agreement >= t.min_agreement:
        failed.append(f"agreement {result.agreement:.4%} < {t.min_agreement:.2%}")
    result.passed = not failed


def ratio_text(result: ShapeComparison) -> str:
    """``2.5x``, or ``inf x`` for a non-finite ratio."""
    ratio = result.ratio
    return "inf x" if ratio is None or not math.isfinite(ratio) else f"{ratio:.3g}x"


def check_pool_inputs(
    result: ShapeComparison,
    cand: Sequence[np.ndarray],
    p32: Sequence[np.ndarray],
    p64: Sequence[np.ndarray],
    windows: Sequence[int],
) -> None:
    """Index unpooling: each candidate pooling input within the noise multiple of its floor; count flipped windows."""
    worst, flipped = 0.0, 0
    for c, a, b, k in zip(cand, p32, p64, windows):
        floor = float(np.abs(a - b).max()) if b.size else 0.0
        limit = NOISE_MULTIPLE * floor + _abs_term(b)
        error = float(np.abs(c.astype(np.float64) - b).max()) if b.size else 0.0
        worst = max(worst, error / limit * NOISE_MULTIPLE if limit > 0 else 0.0)
        flipped += int((_window_choice(c, k) != _window_choice(b, k)).sum())
    result.pool_ratio, result.windows_flipped = worst, flipped
    if worst > NOISE_MULTIPLE:
        result.failed.append(f"a pooling input is {worst:.3g}x its noise floor (limit {NOISE_MULTIPLE:g}x)")
        result.passed = False


def _window_choice(x: np.ndarray, k: int) -> np.ndarray:
    """Index of the first maximum in each k x k window (PyTorch's max-pool index rule, NaN aside)."""
    n, c, h, w = x.shape
    hh, ww = h // k, w // k
    windows = x[:, :, : hh * k, : ww * k].reshape(n, c, hh, k, ww, k).transpose(0, 1, 2, 4, 3, 5)
    return windows.reshape(n, c, hh, ww, k * k).argmax(axis=-1)


def json_float(value: Any) -> Any:
    """JSON has no inf/NaN: write them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
