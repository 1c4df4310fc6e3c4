"""PyTorch -> ONNX: the pipeline behind ``segdeploy export``.

::

    load -> wrap with fused pre/post-processing (segdeploy.export.io)
      -> torch.export, once (dynamic N/H/W, example sizes >= 2)    segdeploy.export.capture
      -> the sizes the model accepts (from the capture, one small real run)
      -> rewrites spliced into the captured program, checked in PyTorch    segdeploy.export.rewrites
      -> translate to ONNX (opset 18) -> onnxsim -> the requested opset -> metadata    segdeploy.export.translate
      -> [FP16 | INT8 Q/DQ] -> onnx.checker(full_check)
      -> lint for TensorRT -> verify against PyTorch -> atomic write

The program is captured once and edited in place: exporting a rewritten
module would make torch trace it a second time, which is slow and can fail on
guards the first trace solved.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy._version import __version__
from segdeploy.artifact import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OUTPUT_NAMES,
    ColorOrder,
    InputFormat,
    Metadata,
    OutputKind,
    Precision,
    Preprocessing,
    check_opset,
    dynamic_axes,
    file_input_shape,
    parse_choice,
    parse_precision,
)
from segdeploy.errors import ExportError, UserInputError, VerificationError
from segdeploy.fileio import check_output_path
from segdeploy.shapes import Shape, check_shape, format_shape, size_problem

if TYPE_CHECKING:
    import torch
    from torch import nn

STAGES = ("capture", "sizes", "rewrite", "onnx", "simplify", "check", "lint", "verify")


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and what it found on the way."""

    path: Path
    metadata: Metadata
    ir_version: int
    size_rule: Any = None  # segdeploy.export.capture.SizeRule
    lint: Any = None  # segdeploy.export.lint.LintReport | None
    verification: Any = None  # segdeploy.verify.VerificationReport | None
    fp32_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def tensorrt_ready(self) -> bool:
        """The TensorRT lint found nothing that stops TensorRT's parser."""
        return self.lint is None or self.lint.ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``segdeploy export --report`` writes)."""
        return {
            "path": str(self.path),
            "opset": self.metadata.opset,
            "ir_version": self.ir_version,
            "input_shape": format_shape(self.metadata.trace_shape) if self.metadata.trace_shape else None,
            "dynamic": not self.metadata.static,
            "precision": self.metadata.precision.value,
            "rewrites": list(self.metadata.rewrites),
            "sizes": self.metadata.describe_sizes(),
            "sizes_narrowed": self.size_rule.narrowed if self.size_rule is not None else "",
            "metadata": self.metadata.to_props(),
            "tensorrt_ready": self.tensorrt_ready,
            "lint": self.lint.to_dict() if self.lint is not None else None,
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "fp32_nodes": list(self.fp32_nodes),
            "warnings": list(self.warnings),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "seconds": round(self.seconds, 3),
        }


def export_onnx(
    model_or_name: nn.Module | str,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    opset: int = 17,
    dynamic: bool = True,
    precision: Precision | str = Precision.FP32,
    simplify: bool = True,
    verify: bool = True,
    num_classes: int | None = None,
    in_channels: int | None = None,
    weights: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    input_format: InputFormat | str = InputFormat.FLOAT32_NCHW,
    color: ColorOrder | str = ColorOrder.RGB,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    output: OutputKind | str = OutputKind.LOGITS,
    calibration: str | os.PathLike[str] | Any = None,
    calib_size: int = 64,
    quantizer: str = "ort",
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a segmentation model to an ONNX file TensorRT's parser accepts, and prove parity.

    Args:
        model_or_name: an ``nn.Module``, a zoo name or ``path/to/file.py:factory``.
        path: the ``.onnx`` file to write (atomically; not written if verification fails).
        input_shape: NCHW shape to trace and verify at; its C is the model's input channels.
        opset: default-domain opset to write, 13 to 20.
        dynamic: dynamic batch/height/width axes; ``False`` fixes ``input_shape``.
        precision: ``fp32``, ``fp16`` (FP16 weights and math, float32 input/output), ``int8`` (Q/DQ for
            TensorRT, FP32 elsewhere) or ``int8-fp16`` (Q/DQ, FP16 elsewhere; opset >= 19).
        simplify: run onnxsim (a failure is recorded as a warning, not raised).
        verify: compare the file with PyTorch at several valid shapes before writing.
        num_classes, weights, config: how to build a named model (``num_classes`` default 21;
            an ``nn.Module``'s classes are read from its output).
        in_channels: must agree with ``input_shape`` when given.
        input_format: ``float32-nchw`` (normalized by the caller), ``uint8-nhwc`` or ``uint8-nchw`` (raw frames,
            normalized inside the graph with ``mean``/``std`` and ``color``).
        color: channel order of the input (``bgr``: flipped to RGB inside the graph for uint8 input).
        mean, std: per-channel, 0..1 units, RGB order; default ImageNet's for 3 channels.
        output: ``logits``, ``probs`` (softmax) or ``classmap`` (int32 argmax).
        calibration: INT8 only: a directory of images (read, resized to the trace size and normalized with
            ``mean``/``std``) or an ``.npy`` of preprocessed NCHW float32 batches, or such an array.
        calib_size: INT8: the most calibration images used.
        quantizer: INT8: ``ort`` (ONNX Runtime, default) or ``modelopt`` (NVIDIA ModelOpt, an optional extra).
        progress: called with each stage name in ``STAGES`` as it starts.

    Returns:
        An ``ExportResult``.

    Raises:
        UserInputError: bad model name, shape, opset, option, or a model that raises in PyTorch.
        ExportError: capture, rewrite, conversion or checking failed.
        VerificationError: the file disagrees with PyTorch; nothing is written, and
            ``exc.report`` / ``exc.result`` hold the report and the would-be ``ExportResult``.
    """

    from segdeploy.export import translate
    from segdeploy.export.capture import SizeRule, capture, check_runs, network_channels, size_rule
    from segdeploy.export.guards import CaptureGuards
    from segdeploy.export.io import FusedIO
    from segdeploy.export.layout import contiguous_reshapes
    from segdeploy.export.rewrites import apply_rewrites
    from segdeploy.models.loading import provenance
    from segdeploy.threads import fitted_threads

    started = time.perf_counter()
    timings: dict[str, float] = {}
    check_opset(opset)
    precision = parse_precision(precision)
    quantized = precision in (Precision.INT8, Precision.INT8_FP16)
    if quantized and calibration is None:
        raise UserInputError(
            f"--precision {precision.value} needs calibration data: pass --calib DIR_OF_IMAGES or "
            "--calib BATCHES.npy (preprocessed NCHW float32)"
        )
    if calibration is not None and not quantized:
        raise UserInputError(f"calibration data is for --precision int8 or int8-fp16, not {precision.value}")
    shape = check_shape(tuple(input_shape))  # type: ignore[arg-type]
    if in_channels is not None and in_channels != shape[1]:
        raise UserInputError(f"in_channels {in_channels} disagrees with input shape {format_shape(shape)}")
    preprocessing = _preprocessing(input_format, color, mean, std, shape[1])
    output = parse_choice(OutputKind, output, "output")
    if quantized and preprocessing.fused:
        raise UserInputError(
            "INT8 export takes float32-nchw input: quantize the float file, and normalize frames "
            "before it (or export fp16 with --input-format uint8-...)"
        )
    check_output_path(path)  # before minutes of export work, not after
    calib = _calibration(calibration, shape, preprocessing, calib_size, quantizer) if quantized else None
    clock = _StageClock(progress, timings)

    clock("capture")
    loaded = _load(model_or_name, num_classes, shape[1], weights, config)
    shape = check_shape(shape, min_size=loaded.min_size)
    if dynamic and (shape[2] < 2 or shape[3] < 2):
        raise UserInputError(f"a dynamic export needs height and width of at least 2, got {format_shape(shape)}")
    wrapper = FusedIO(loaded.module, preprocessing, output).eval()
    axes = dynamic_axes(preprocessing.input_format) if dynamic else None
    example_shape = (max(shape[0], 2) if dynamic else shape[0], *shape[1:])  # torch.export specializes size 1
    example = _example(file_input_shape(example_shape, preprocessing.input_format), preprocessing)  # type: ignore[arg-type]
    try:
        program = capture(wrapper, example, axes)
    except ExportError:
        try:
            check_runs(loaded.module, shape)  # the model's own error at this shape, if it has one
        except UserInputError as exc:
            from segdeploy.export.fit import unfit_shape_error

            raise unfit_shape_error(loaded.module, shape, exc) from exc
        raise

    clock("sizes")
    if dynamic:
        spatial = [axis for axis, name in axes.items() if name in ("height", "width")]  # type: ignore[union-attr]
        out_axes = (1, 2) if output is OutputKind.CLASSMAP else (2, 3)
        rule = size_rule(
            program, loaded.module, shape, spatial_axes=spatial, out_axes=out_axes, min_size_hint=loaded.min_size
        )
    else:
        rule = SizeRule(
            1, max(loaded.min_size, 1), network_channels(loaded.module, program, shape), fixed=(shape[2], shape[3])
        )
    unfit = size_problem(shape[2], shape[3], rule.multiple, rule.min_size) if dynamic else None
    if unfit:  # traced off the model's own rule: its output there is not what the rule promises
        raise UserInputError(f"bad input shape {format_shape(shape)}: {unfit}")
    notes: list[str] = []
    if rule.multiple > 1:
        notes.append(f"the model {rule.describe()}")

    clock("rewrite")
    found = apply_rewrites(program)
    missing = [name for name in loaded.rewrites_hint if name not in found.applied]
    if missing:
        notes.append(f"the registry lists rewrites {missing} for this model but they did not match its graph")
    if found.applied:
        # a small shape keeps the check cheap; the traced one is valid wherever the capture's guards are not
        shapes = [_check_shape(shape, rule), example_shape] if dynamic else [shape]
        with fitted_threads():  # a busy machine: fewer PyTorch threads run faster
            _check_rewritten(wrapper, program, shapes, preprocessing, found.applied)
    guards = None
    if dynamic:  # what the capture assumed about sizes, rewrites included: where the runs must look
        clock("sizes")
        guards = CaptureGuards.from_program(program, axes)  # type: ignore[arg-type]
        if not verify and (unproven := guards.unproven(rule, shape)):
            notes.append(unproven)

    clock("onnx")
    contiguous_reshapes(program)
    tracked = [name for name, _ in found.unpool_inputs]
    proto, renamed = translate.to_onnx(program, example, OUTPUT_NAMES[output], axes, tracked)

    clock("simplify")
    if simplify:  # before the opset conversion: it folds the shape arithmetic the down-converters need constant
        proto = translate.simplify(proto, notes)
    proto = translate.to_opset(proto, opset)
    if preprocessing.fused:
        translate.shapes_after_cast(proto)
    if dynamic and rule.fixed is not None:
        translate.fix_spatial_dims(proto, rule.fixed, preprocessing.input_format)
    values = {out for node in proto.graph.node for out in node.output} | {i.name for i in proto.graph.input}
    unpool_inputs = tuple((renamed[name], k) for name, k in found.unpool_inputs if renamed.get(name) in values)
    if len(unpool_inputs) != len(found.unpool_inputs):
        notes.append("some unpooling inputs were optimized away: verification cannot read the window choices")
        unpool_inputs = ()
    metadata = Metadata(
        architecture=loaded.name, source=loaded.source, config=dict(config or {}) if loaded.source != "object" else {},
        num_classes=rule.out_channels, in_channels=shape[1], trace_shape=shape,
        dynamic_axes=_file_axes(axes, rule), min_size=rule.min_size, size_multiple=rule.multiple,
        max_size=rule.max_size,
        rewrites=tuple(found.applied), precision=precision, opset=opset, preprocessing=preprocessing,
        output=output, unpool_inputs=unpool_inputs, segdeploy_version=__version__, **provenance(loaded),
    )  # fmt: skip
    fp32_nodes: list[str] = []
    if precision is Precision.FP16:
        from segdeploy.precision import convert_to_fp16

        proto, fp32_nodes = convert_to_fp16(proto)
    elif quantized:
        from segdeploy.quantize import quantize_int8

        proto, quantization = quantize_int8(proto, calib, quantizer=quantizer, fp16=precision is Precision.INT8_FP16)
        notes.append(quantization.summary())
        fp32_nodes = list(quantization.float_nodes)
    translate.set_metadata(proto, metadata)

    clock("check")
    translate.check(proto, opset)

    result = ExportResult(
        Path(path), metadata, int(proto.ir_version), rule, fp32_nodes=fp32_nodes, warnings=notes, stage_seconds=timings
    )
    from segdeploy.fileio import atomic_output

    with atomic_output(path) as tmp:
        translate.save(proto, tmp)
        clock("lint")
        from segdeploy.export.lint import lint_onnx

        result.lint = lint_onnx(proto, checker=False)  # the file's own proto, fully checked above
        if verify:
            clock("verify")
            from segdeploy.verify import verify_rule

            def narrow(narrower: SizeRule) -> Metadata:
                nonlocal rule
                rule = result.size_rule = _narrowed(rule, narrower, notes)
                metadata.min_size, metadata.size_multiple = rule.min_size, rule.multiple
                metadata.max_size, metadata.dynamic_axes = rule.max_size, _file_axes(axes, rule)
                if rule.fixed is not None:
                    translate.fix_spatial_dims(proto, rule.fixed, preprocessing.input_format)
                translate.set_metadata(proto, metadata)
                translate.save(proto, tmp)
                return metadata

            result.verification, _ = verify_rule(tmp, loaded.module, metadata, rule, shape, narrow, guards=guards)
            report = result.verification
            clock(None)
            result.seconds = time.perf_counter() - started
            if not report.passed:
                what = "disagrees with PyTorch" if report.judged else "cannot be verified"
                error = VerificationError(f"the exported file {what}, {path} not written: {report.worst()}")
                error.report = report  # type: ignore[attr-defined]
                error.result = result  # type: ignore[attr-defined]
                raise error
    clock(None)
    result.seconds = time.perf_counter() - started
    return result


class _StageClock:
    """Reports each stage as it starts and keeps how long each took."""

    def __init__(self, progress: Callable[[str], None] | None, timings: dict[str, float]) -> None:
        self.progress, self.timings = progress, timings
        self.stage: str | None = None
        self.began = time.perf_counter()

    def __call__(self, stage: str | None) -> None:
        now = time.perf_counter()
        if self.stage is not None:
            self.timings[self.stage] = self.timings.get(self.stage, 0.0) + now - self.began
        self.stage, self.began = stage, now
        if stage is not None and self.progress is not None:
            self.progress(stage)


# --------------------------------------------------------------------------- stages
def _preprocessing(
    input_format: Any, color: Any, mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> Preprocessing:
    fmt = parse_choice(InputFormat, input_format, "input format")
    order = parse_choice(ColorOrder, color, "color order")
    if mean is None and std is None and channels != 3:
        if fmt is not InputFormat.FLOAT32_NCHW:
            raise UserInputError(f"a {channels}-channel model with {fmt.value} input needs --mean and --std")
        mean, std = (0.0,) * channels, (1.0,) * channels
    mean = tuple(float(v) for v in (mean if mean is not None else IMAGENET_MEAN))
    std = tuple(float(v) for v in (std if std is not None else IMAGENET_STD))
    if len(mean) != channels or len(std) != channels:
        raise UserInputError(
            f"--mean and --std need {channels} values (one per input channel), got {len(mean)} and {len(std)}"
        )
    if any(not s > 0 for s in std):
        raise UserInputError(f"--std values must be positive, got {','.join(f'{s:g}' for s in std)}")
    if order is ColorOrder.BGR and channels != 3:
        raise UserInputError(f"--color bgr needs a 3-channel model, this one takes {channels}")
    return Preprocessing(fmt, order, mean, std)


def _calibration(source: Any, shape: Shape, preprocessing: Preprocessing, calib_size: int, quantizer: str) -> Any:
    """Calibration inputs, read before any export work so that bad data fails fast."""
    import numpy as np

    from segdeploy.quantize import QUANTIZERS, load_calibration, modelopt_available

    if quantizer not in QUANTIZERS:
        raise UserInputError(f"unknown quantizer {quantizer!r}: choose {' or '.join(QUANTIZERS)}")
    if quantizer == "modelopt" and not modelopt_available():
        from segdeploy.errors import MissingDependencyError

        raise MissingDependencyError("--quantizer modelopt needs NVIDIA ModelOpt: pip install 'segdeploy[modelopt]'")
    if isinstance(source, np.ndarray):
        return source
    return load_calibration(
        source,
        shape=shape[2:],
        in_channels=shape[1],
        calib_size=calib_size,
        mean=preprocessing.mean,
        std=preprocessing.std,
    )


def _load(
    model_or_name: Any, num_classes: int | None, in_channels: int, weights: Any, config: dict[str, Any] | None
) -> Any:
    from torch import nn

    from segdeploy.models.loading import LoadedModel, load_model

    if isinstance(model_or_name, nn.Module):
        sha256 = None
        if weights is not None:
            from segdeploy.checkpoints import load_weights
            from segdeploy.fileio import sha256_file

            load_weights(model_or_name, weights)
            sha256 = sha256_file(weights)
        return LoadedModel(
            module=model_or_name.eval(),
            name=type(model_or_name).__name__,
            info=None,
            num_classes=num_classes or 0,
            in_channels=in_channels,
            min_size=1,
            source="object",
            weights=os.fspath(weights) if weights is not None else None,
            weights_sha256=sha256,
        )
    if not isinstance(model_or_name, str):
        raise UserInputError(
            f"expected an nn.Module, a zoo name or file.py:factory, got {type(model_or_name).__name__}"
        )
    return load_model(
        model_or_name, num_classes=num_classes or 21, in_channels=in_channels, weights=weights, **(config or {})
    )


def _example(shape: Sequence[int], preprocessing: Preprocessing) -> torch.Tensor:
    import torch

    if preprocessing.fused:
        return torch.randint(0, 256, tuple(shape), dtype=torch.uint8)
    return torch.randn(*shape)


def _narrowed(rule: Any, narrower: Any, notes: list[str]) -> Any:
    """``narrower`` in place of ``rule``, with a note saying what the file now accepts and why."""
    if narrower != rule:
        notes.append(f"sizes narrowed: the file {narrower.describe()}, because {narrower.narrowed}")
    return narrower


def _file_axes(axes: dict[int, str] | None, rule: Any) -> tuple[str, ...]:
    """The file's dynamic axes: height and width are fixed when the rule admits only the traced size."""
    names = tuple(axes.values()) if axes else ()
    return tuple(n for n in names if n == "batch") if rule.fixed is not None else names


def _check_shape(shape: Shape, rule: Any) -> Shape:
    """A small valid shape to check the rewritten program at: batch 2, odd non-square sides near 64.

    Small keeps the check cheap; it differs from the traced shape in every dynamic dimension.
    """

    def side(s: int, extra: int) -> int:
        target = max(rule.min_size, min(s, 64)) + extra
        return -(-target // rule.multiple) * rule.multiple

    return (2, shape[1], side(shape[2], 1), side(shape[3], 3))


def _check_rewritten(
    wrapper: nn.Module, program: Any, shapes: Sequence[Shape], preprocessing: Preprocessing, rewrites: list[str]
) -> None:
    """The edited program against the model in PyTorch, before anything is translated.

    At the first of ``shapes`` the capture's guards accept (torch.export assumes, for one, that sizes
    derived from a dynamic side are not 1: a SegNet traced at 512 is checked no lower than 64).
    """
    import torch

    from segdeploy.export.torch_compat import GuardFailure, call_guarded

    module = program.module()
    for shape in shapes:
        example = _example(file_input_shape(shape, preprocessing.input_format), preprocessing)
        try:
            with torch.no_grad():
                got = call_guarded(module, example)
        except GuardFailure:  # a guard of the capture: try the next (larger) shape
            if shape is shapes[-1]:
                raise
            continue
        with torch.no_grad():
            expected = wrapper(example)
        break
    if expected.shape != got.shape:
        raise ExportError(f"rewrites {rewrites} changed the output shape {tuple(expected.shape)} -> {tuple(got.shape)}")
    if not expected.is_floating_point():
        same = float((expected == got).float().mean())
        if same < 0.999:  # a class map: a near-tie may round the other way, nothing more
            raise ExportError(f"rewrites {rewrites} changed {1 - same:.2%} of the class map in PyTorch")
        return
    scale = float(expected.abs().max()) or 1.0
    error = float((expected - got).abs().max()) / scale
    if not error <= 1e-5:  # also catches NaN
        raise ExportError(f"rewrites {rewrites} changed the model's output in PyTorch (relative error {error:.3g})")
