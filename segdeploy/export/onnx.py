"""PyTorch -> ONNX, in memory: capture -> rewrite -> translate -> post-process, then ``OnnxModel.write``.

::

    load -> wrap with fused pre/post-processing (segdeploy.export.io)
      -> torch.export, once (dynamic N/H/W, example sizes >= 2)    segdeploy.export.capture
      -> the sizes the model accepts (from the capture, one small real run)
      -> rewrites spliced into the captured program, checked in PyTorch    segdeploy.export.rewrites
      -> translate to ONNX (opset 18) -> onnxsim -> the requested opset    segdeploy.export.translate
      -> [FP16 | INT8 Q/DQ] -> metadata -> onnx.checker(full_check)

The program is captured once and edited in place: exporting a rewritten
module would make torch trace it a second time, which is slow and can fail on
guards the first trace solved. Linting, verifying against PyTorch and the
atomic write of a checked file are composed in ``segdeploy.pipeline``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from segdeploy._version import __version__
from segdeploy.artifact import (
    OUTPUT_NAMES,
    Metadata,
    OutputKind,
    Precision,
    Preprocessing,
    dynamic_axes,
    file_input_shape,
)
from segdeploy.errors import ExportError, UserInputError
from segdeploy.export.options import Calibration, ExportPlan, ModelSpec
from segdeploy.shapes import Shape, check_shape, format_shape, size_problem

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

    from segdeploy.export.capture import SizeRule
    from segdeploy.models.loading import LoadedModel

STAGES = ("capture", "sizes", "rewrite", "onnx", "simplify", "check")


@dataclass
class OnnxModel:
    """An exported model in memory: the checked ONNX, what it promises, and the network it came from.

    Attributes:
        proto: the ONNX model, metadata set, passed ``onnx.checker`` (full check) at the asked opset.
        metadata: the file's segdeploy metadata (the same object ``proto`` carries as properties).
        size_rule: the sizes the file accepts, as proven so far.
        module: the PyTorch network (normalized float NCHW in, the model's own output).
        trace_shape: the NCHW shape the model was captured at.
        fp32_nodes: nodes an FP16 or INT8 conversion kept in float32.
        warnings: notes for the user (sizes narrowed, simplifier failures, quantization summary).
    """

    proto: onnx.ModelProto
    metadata: Metadata
    size_rule: SizeRule
    module: nn.Module
    trace_shape: Shape
    fp32_nodes: list[str]
    warnings: list[str]
    guards: Any = None  # segdeploy.export.guards.CaptureGuards of a dynamic capture: where runs must look

    @property
    def ir_version(self) -> int:
        return int(self.proto.ir_version)

    def narrow(self, rule: SizeRule) -> Metadata:
        """Make the model promise ``rule`` (narrower than its own): metadata, and fixed input sides if it is fixed.

        Returns:
            The updated metadata (``self.metadata``).
        """
        from segdeploy.export import translate

        self.size_rule = _narrowed(self.size_rule, rule, self.warnings)
        self.metadata.min_size, self.metadata.size_multiple = rule.min_size, rule.multiple
        self.metadata.max_size = rule.max_size
        self.metadata.dynamic_axes = _file_axes(self.metadata.dynamic_axes, rule)
        if rule.fixed is not None:
            translate.fix_spatial_dims(self.proto, rule.fixed, self.metadata.preprocessing.input_format)
        translate.set_metadata(self.proto, self.metadata)
        return self.metadata

    def write(self, path: str | os.PathLike[str]) -> None:
        """Save the model to ``path`` as one file (callers write through ``fileio.atomic_output``)."""
        from pathlib import Path

        from segdeploy.export import translate

        translate.save(self.proto, Path(path))


def build_onnx(model: nn.Module | str, plan: ExportPlan, clock: StageClock | None = None) -> OnnxModel:
    """Export a segmentation model to an ONNX model TensorRT's parser accepts, in memory.

    capture -> sizes -> rewrite -> translate (onnx, simplify, opset) -> post-process (precision,
    metadata) -> check; ``OnnxModel.write`` writes it.

    Args:
        model: an ``nn.Module``, a zoo name or ``path/to/file.py:factory``.
        plan: the checked options (``ExportOptions.check()``).
        clock: reports each stage in ``STAGES`` as it starts and keeps their seconds; the last stage
            ("check") runs on until the caller names the next one.

    Returns:
        An ``OnnxModel`` (nothing is written).

    Raises:
        UserInputError: bad model name, shape or option, or a model that raises in PyTorch.
        ExportError: capture, rewrite, conversion or checking failed.
    """
    from segdeploy.export import translate
    from segdeploy.export.rewrites import apply_rewrites

    clock = clock if clock is not None else StageClock()
    calibration = plan.options.calibration if plan.quantized else None
    calib = calibration.load(plan.shape, plan.preprocessing) if calibration is not None else None
    notes: list[str] = []

    clock("capture")
    captured = _capture(model, plan)
    clock("sizes")
    rule = _size_rule(captured, plan, notes)
    clock("rewrite")
    found = apply_rewrites(captured.program)
    _check_rewrites(captured, found, rule, plan, notes)
    guards = None
    if plan.options.dynamic:
        clock("sizes")  # what the capture assumed about sizes, rewrites included: where the runs must look
        from segdeploy.export.guards import CaptureGuards

        guards = CaptureGuards.from_program(captured.program, captured.axes)  # type: ignore[arg-type]
    clock("onnx")
    proto, unpool_inputs = _translate(captured, found, rule, plan, clock, notes)
    metadata = _metadata(captured, plan, rule, tuple(found.applied), unpool_inputs)
    proto, fp32_nodes = _post_process(proto, plan, calibration, calib, notes)
    translate.set_metadata(proto, metadata)
    clock("check")
    translate.check(proto, plan.options.opset)
    return OnnxModel(proto, metadata, rule, captured.loaded.module, captured.shape, fp32_nodes, notes, guards)


class StageClock:
    """Reports each stage as it starts and keeps how long each took (``timings``, seconds by stage)."""

    def __init__(self, progress: Callable[[str], None] | None = None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self.stage: str | None = None
        self.began = time.perf_counter()

    def __call__(self, stage: str | None) -> None:
        """End the running stage and start ``stage`` (None: stop)."""
        now = time.perf_counter()
        if self.stage is not None:
            self.timings[self.stage] = self.timings.get(self.stage, 0.0) + now - self.began
        self.stage, self.began = stage, now
        if stage is not None and self.progress is not None:
            self.progress(stage)


# --------------------------------------------------------------------------- stages
@dataclass
class _Captured:
    """The capture and what it was made of."""

    loaded: LoadedModel
    wrapper: nn.Module  # the model with its fused pre/post-processing
    program: Any  # torch.export.ExportedProgram, edited in place by the rewrites
    axes: dict[int, str] | None  # the file input's dynamic axes (None: static)
    shape: Shape  # the traced NCHW shape, checked against the model's minimum
    example_shape: Shape  # the NCHW shape of the example (batch >= 2 when dynamic)
    example: torch.Tensor


def _capture(model: nn.Module | str, plan: ExportPlan) -> _Captured:
    """Load the model, wrap it with its fused I/O and capture it once with torch.export."""
    from segdeploy.export.capture import capture, check_runs
    from segdeploy.export.io import FusedIO

    preprocessing, dynamic = plan.preprocessing, plan.options.dynamic
    loaded = _load(model, plan.options.spec, plan.shape[1])
    shape = check_shape(plan.shape, min_size=loaded.min_size)
    if dynamic and (shape[2] < 2 or shape[3] < 2):
        raise UserInputError(f"a dynamic export needs height and width of at least 2, got {format_shape(shape)}")
    wrapper = FusedIO(loaded.module, preprocessing, plan.output).eval()
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
    return _Captured(loaded, wrapper, program, axes, shape, example_shape, example)  # type: ignore[arg-type]


def _size_rule(captured: _Captured, plan: ExportPlan, notes: list[str]) -> SizeRule:
    """The sizes the model accepts, from the capture (a fixed-size file: its one size)."""
    from segdeploy.export.capture import SizeRule, network_channels, size_rule

    loaded, program, shape, axes = captured.loaded, captured.program, captured.shape, captured.axes
    if axes is not None:
        spatial = [axis for axis, name in axes.items() if name in ("height", "width")]
        out_axes = (1, 2) if plan.output is OutputKind.CLASSMAP else (2, 3)
        rule = size_rule(
            program, loaded.module, shape, spatial_axes=spatial, out_axes=out_axes, min_size_hint=loaded.min_size
        )
        unfit = size_problem(shape[2], shape[3], rule.multiple, rule.min_size)
        if unfit:  # traced off the model's own rule: its output there is not what the rule promises
            raise UserInputError(f"bad input shape {format_shape(shape)}: {unfit}")
    else:
        rule = SizeRule(
            1, max(loaded.min_size, 1), network_channels(loaded.module, program, shape), fixed=(shape[2], shape[3])
        )
    if rule.multiple > 1:
        notes.append(f"the model {rule.describe()}")
    return rule


def _check_rewrites(captured: _Captured, found: Any, rule: SizeRule, plan: ExportPlan, notes: list[str]) -> None:
    """Note the rewrites the registry expected and did not find; check the applied ones in PyTorch."""
    missing = [name for name in captured.loaded.rewrites_hint if name not in found.applied]
    if missing:
        notes.append(f"the registry lists rewrites {missing} for this model but they did not match its graph")
    if found.applied:
        shape = captured.shape
        # a small shape keeps the check cheap; the traced one is valid wherever the capture's guards are not
        shapes = [_check_shape(shape, rule), captured.example_shape] if plan.options.dynamic else [shape]
        from segdeploy.threads import fitted_threads

        with fitted_threads():  # a busy machine: fewer PyTorch threads run faster
            _check_rewritten(captured.wrapper, captured.program, shapes, plan.preprocessing, found.applied)


def _translate(
    captured: _Captured, found: Any, rule: SizeRule, plan: ExportPlan, clock: StageClock, notes: list[str]
) -> tuple[onnx.ModelProto, tuple[tuple[str, int], ...]]:
    """The edited program as ONNX at the asked opset, and the unpooling inputs verification reads (renamed)."""
    from segdeploy.export import translate
    from segdeploy.export.layout import contiguous_reshapes

    program, preprocessing = captured.program, plan.preprocessing
    contiguous_reshapes(program)
    tracked = [name for name, _ in found.unpool_inputs]
    proto, renamed = translate.to_onnx(program, captured.example, OUTPUT_NAMES[plan.output], captured.axes, tracked)

    clock("simplify")
    if plan.options.simplify:  # before the opset conversion: it folds the shape arithmetic the down-converters need
        proto = translate.simplify(proto, notes)
    proto = translate.to_opset(proto, plan.options.opset)
    if preprocessing.fused:
        translate.shapes_after_cast(proto)
    if plan.options.dynamic and rule.fixed is not None:
        translate.fix_spatial_dims(proto, rule.fixed, preprocessing.input_format)
    values = {out for node in proto.graph.node for out in node.output} | {i.name for i in proto.graph.input}
    unpool_inputs = tuple((renamed[name], k) for name, k in found.unpool_inputs if renamed.get(name) in values)
    if len(unpool_inputs) != len(found.unpool_inputs):
        notes.append("some unpooling inputs were optimized away: verification cannot read the window choices")
        unpool_inputs = ()
    return proto, unpool_inputs


def _metadata(
    captured: _Captured,
    plan: ExportPlan,
    rule: SizeRule,
    rewrites: tuple[str, ...],
    unpool_inputs: tuple[tuple[str, int], ...],
) -> Metadata:
    """What the file says about itself (``segdeploy.artifact.Metadata``)."""
    from segdeploy.models.loading import provenance

    loaded, shape, axes = captured.loaded, captured.shape, captured.axes
    return Metadata(
        architecture=loaded.name, source=loaded.source,
        config=dict(plan.options.spec.config or {}) if loaded.source != "object" else {},
        num_classes=rule.out_channels, in_channels=shape[1], trace_shape=shape,
        dynamic_axes=_file_axes(tuple(axes.values()) if axes else (), rule), min_size=rule.min_size,
        size_multiple=rule.multiple, max_size=rule.max_size,
        rewrites=rewrites, precision=plan.precision, opset=plan.options.opset, preprocessing=plan.preprocessing,
        output=plan.output, unpool_inputs=unpool_inputs, segdeploy_version=__version__, **provenance(loaded),
    )  # fmt: skip


def _post_process(
    proto: onnx.ModelProto, plan: ExportPlan, calibration: Calibration | None, calib: Any, notes: list[str]
) -> tuple[onnx.ModelProto, list[str]]:
    """The asked precision: FP16 conversion or INT8 Q/DQ; returns the model and the nodes kept in float32."""
    if plan.precision is Precision.FP16:
        from segdeploy.precision import convert_to_fp16

        return convert_to_fp16(proto)
    if calibration is not None:  # INT8: ExportOptions.check asks calibration data of every quantized export
        from segdeploy.quantize import quantize_int8

        fp16 = plan.precision is Precision.INT8_FP16
        proto, quantization = quantize_int8(proto, calib, quantizer=calibration.quantizer, fp16=fp16)
        notes.append(quantization.summary())
        return proto, list(quantization.float_nodes)
    return proto, []


def _load(model: Any, spec: ModelSpec, in_channels: int) -> LoadedModel:
    from torch import nn

    from segdeploy.models.loading import LoadedModel, load_model

    weights = spec.weights
    if isinstance(model, nn.Module):
        sha256 = None
        if weights is not None:
            from segdeploy.checkpoints import load_weights
            from segdeploy.fileio import sha256_file

            load_weights(model, weights)
            sha256 = sha256_file(weights)
        return LoadedModel(
            module=model.eval(),
            name=type(model).__name__,
            info=None,
            num_classes=spec.num_classes or 0,
            in_channels=in_channels,
            min_size=1,
            source="object",
            weights=os.fspath(weights) if weights is not None else None,
            weights_sha256=sha256,
        )
    if not isinstance(model, str):
        raise UserInputError(f"expected an nn.Module, a zoo name or file.py:factory, got {type(model).__name__}")
    return load_model(
        model, num_classes=spec.num_classes or 21, in_channels=in_channels, weights=weights, **(spec.config or {})
    )


def _example(shape: Sequence[int], preprocessing: Preprocessing) -> torch.Tensor:
    import torch

    if preprocessing.fused:
        return torch.randint(0, 256, tuple(shape), dtype=torch.uint8)
    return torch.randn(*shape)


def _narrowed(rule: SizeRule, narrower: SizeRule, notes: list[str]) -> SizeRule:
    """``narrower`` in place of ``rule``, with a note saying what the file now accepts and why."""
    if narrower != rule:
        notes.append(f"sizes narrowed: the file {narrower.describe()}, because {narrower.narrowed}")
    return narrower


def _file_axes(names: Sequence[str], rule: SizeRule) -> tuple[str, ...]:
    """The file's dynamic axes among ``names``: height and width are fixed when the rule admits only the traced size."""
    names = tuple(names)
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
