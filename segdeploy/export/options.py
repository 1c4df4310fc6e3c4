"""What an export is asked for, in small typed groups, checked before any work starts.

``ModelSpec`` says how a named model is built, ``IOFormat`` what the graph takes and gives,
``Calibration`` where INT8 calibration data comes from; ``ExportOptions`` holds them with the
shape, opset and precision, and ``ExportOptions.check`` turns them into an ``ExportPlan`` (parsed
enums, the pre-processing, the checked shape) or raises the user's one-line error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segdeploy.artifact import (
    DEFAULT_OPSET,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ColorOrder,
    InputFormat,
    OutputKind,
    Precision,
    Preprocessing,
    check_opset,
    parse_choice,
    parse_precision,
)
from segdeploy.errors import UserInputError
from segdeploy.shapes import Shape, check_shape, format_shape

if TYPE_CHECKING:
    import numpy as np

QUANTIZED = (Precision.INT8, Precision.INT8_FP16)


@dataclass(frozen=True)
class ModelSpec:
    """How a zoo name or ``file.py:factory`` is built, and the checkpoint loaded into it.

    Attributes:
        num_classes: output classes of a named model (default 21); an ``nn.Module``'s are read from its output.
        in_channels: input channels; must agree with the input shape when given.
        weights: a checkpoint, loaded with ``weights_only=True``.
        config: the builder's options (``--config key=value``).
    """

    num_classes: int | None = None
    in_channels: int | None = None
    weights: str | os.PathLike[str] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IOFormat:
    """What the graph takes and gives.

    Attributes:
        input_format: ``float32-nchw`` (normalized by the caller), ``uint8-nhwc`` or ``uint8-nchw`` (raw frames,
            normalized inside the graph with ``mean``/``std`` and ``color``).
        color: channel order of the input (``bgr``: flipped to RGB inside the graph for uint8 input).
        mean, std: per channel, 0..1 units, RGB order; default ImageNet's for 3 channels.
        output_kind: ``logits``, ``probs`` (softmax) or ``classmap`` (int32 argmax).
    """

    input_format: InputFormat | str = InputFormat.FLOAT32_NCHW
    color: ColorOrder | str = ColorOrder.RGB
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    output_kind: OutputKind | str = OutputKind.LOGITS

    def preprocessing(self, channels: int) -> Preprocessing:
        """The checked pre-processing for a model of ``channels`` input channels.

        Raises:
            UserInputError: an unknown format or color order, or mean/std that do not fit the channels.
        """
        fmt = parse_choice(InputFormat, self.input_format, "input format")
        order = parse_choice(ColorOrder, self.color, "color order")
        mean, std = self.mean, self.std
        if mean is None and std is None and channels != 3:
            if fmt is not InputFormat.FLOAT32_NCHW:
                raise UserInputError(f"a {channels}-channel model with {fmt.value} input needs --mean and --std")
            mean, std = (0.0,) * channels, (1.0,) * channels
        means = tuple(float(v) for v in (mean if mean is not None else IMAGENET_MEAN))
        stds = tuple(float(v) for v in (std if std is not None else IMAGENET_STD))
        if len(means) != channels or len(stds) != channels:
            raise UserInputError(
                f"--mean and --std need {channels} values (one per input channel), got {len(means)} and {len(stds)}"
            )
        if any(not s > 0 for s in stds):
            raise UserInputError(f"--std values must be positive, got {','.join(f'{s:g}' for s in stds)}")
        if order is ColorOrder.BGR and channels != 3:
            raise UserInputError(f"--color bgr needs a 3-channel model, this one takes {channels}")
        return Preprocessing(fmt, order, means, stds)


@dataclass(frozen=True)
class Calibration:
    """INT8 calibration data and the quantizer that places the Q/DQ pairs.

    Attributes:
        data: a directory of images (read, resized to the trace size and normalized with the export's
            mean/std), a dataset specification (``voc:ROOT:SPLIT``...), an ``.npy`` of preprocessed NCHW
            float32 batches, or such an array.
        max_images: the most calibration images used.
        quantizer: ``ort`` (ONNX Runtime, default) or ``modelopt`` (NVIDIA ModelOpt, an optional extra).
    """

    data: str | os.PathLike[str] | np.ndarray
    max_images: int = 64
    quantizer: str = "ort"

    def load(self, shape: Shape, preprocessing: Preprocessing) -> np.ndarray:
        """The calibration inputs, read before any export work so that bad data fails fast.

        Raises:
            UserInputError: an unknown quantizer, or data that cannot be read.
            MissingDependencyError: ``modelopt`` without NVIDIA ModelOpt.
        """
        import numpy as np

        from segdeploy.quantize import QUANTIZERS, load_calibration, modelopt_available

        if self.quantizer not in QUANTIZERS:
            raise UserInputError(f"unknown quantizer {self.quantizer!r}: choose {' or '.join(QUANTIZERS)}")
        if self.quantizer == "modelopt" and not modelopt_available():
            from segdeploy.errors import MissingDependencyError

            raise MissingDependencyError(
                "--quantizer modelopt needs NVIDIA ModelOpt: pip install 'segdeploy[modelopt]'"
            )
        if isinstance(self.data, np.ndarray):
            return self.data
        return load_calibration(
            self.data,
            shape=shape[2:],
            in_channels=shape[1],
            calib_size=self.max_images,
            mean=preprocessing.mean,
            std=preprocessing.std,
        )


@dataclass(frozen=True)
class ExportOptions:
    """Everything an export is asked for.

    Attributes:
        input_shape: NCHW shape to trace (and verify) at; its C is the model's input channels.
        opset: default-domain opset to write, 13 to 20.
        dynamic: dynamic batch/height/width axes; ``False`` fixes ``input_shape``.
        simplify: run onnxsim (a failure is recorded as a warning, not raised).
        precision: ``fp32``, ``fp16`` (FP16 weights and math, float32 input/output), ``int8`` (Q/DQ for
            TensorRT, FP32 elsewhere) or ``int8-fp16`` (Q/DQ, FP16 elsewhere; opset >= 19).
        spec: how a named model is built (``ModelSpec``).
        io: what the graph takes and gives (``IOFormat``).
        calibration: INT8 only: the calibration data (``Calibration``).
    """

    input_shape: Sequence[int]
    opset: int = DEFAULT_OPSET
    dynamic: bool = True
    simplify: bool = True
    precision: Precision | str = Precision.FP32
    spec: ModelSpec = field(default_factory=ModelSpec)
    io: IOFormat = field(default_factory=IOFormat)
    calibration: Calibration | None = None

    def check(self) -> ExportPlan:
        """The options parsed and checked against each other, before any file or model is touched.

        Raises:
            UserInputError: a bad shape, opset, precision, format, normalization or combination.
        """
        check_opset(self.opset)
        precision = parse_precision(self.precision)
        quantized = precision in QUANTIZED
        if quantized and self.calibration is None:
            raise UserInputError(
                f"--precision {precision.value} needs calibration data: pass --calib DIR_OF_IMAGES or "
                "--calib BATCHES.npy (preprocessed NCHW float32)"
            )
        if self.calibration is not None and not quantized:
            raise UserInputError(f"calibration data is for --precision int8 or int8-fp16, not {precision.value}")
        shape = check_shape(tuple(self.input_shape))  # type: ignore[arg-type]
        channels = self.spec.in_channels
        if channels is not None and channels != shape[1]:
            raise UserInputError(f"in_channels {channels} disagrees with input shape {format_shape(shape)}")
        preprocessing = self.io.preprocessing(shape[1])
        output = parse_choice(OutputKind, self.io.output_kind, "output")
        if quantized and preprocessing.fused:
            raise UserInputError(
                "INT8 export takes float32-nchw input: quantize the float file, and normalize frames "
                "before it (or export fp16 with --input-format uint8-...)"
            )
        return ExportPlan(self, shape, precision, preprocessing, output)


@dataclass(frozen=True)
class ExportPlan:
    """``ExportOptions`` after ``check``: the shape checked, the choices parsed."""

    options: ExportOptions
    shape: Shape
    precision: Precision
    preprocessing: Preprocessing
    output: OutputKind

    @property
    def quantized(self) -> bool:
        return self.precision in QUANTIZED
