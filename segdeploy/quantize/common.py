"""What the quantizer's parts share: settings and the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

QUANTIZERS = ("ort", "modelopt")
DEFAULT_CALIB_SIZE = 64


# Ops whose inputs carry the work TensorRT runs in INT8.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_SHAPE_OPS = frozenset({"Shape", "Size"})
_INT8_MAX = 127.0
# The first opset whose QuantizeLinear/DequantizeLinear take FP16 scales (int8-fp16 needs them).
FP16_QDQ_OPSET = 19
_CALIB_BATCH = 8
_MODELOPT_EXTRA = "pip install 'segdeploy[modelopt]' (nvidia-modelopt[onnx])"


@dataclass
class QuantizationReport:
    """What ``quantize_int8`` did.

    Attributes:
        quantizer: ``"ort"`` or ``"modelopt"``.
        precision: ``"int8"`` (the rest FP32) or ``"int8-fp16"`` (the rest FP16).
        calibration_images: images the activation ranges were measured on.
        quantized_nodes: names of the Conv/ConvTranspose/MatMul/Gemm nodes whose inputs are quantized.
        float_nodes: names of such nodes left in float, with why (``name: reason``).
        residual_adds: names of the Adds whose skip input was given Q/DQ.
        seconds: wall time.
        notes: anything else worth knowing.
    """

    quantizer: str
    precision: str
    calibration_images: int
    quantized_nodes: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    residual_adds: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``"int8 (ort): 26 nodes quantized, 0 left in float, 4 residual Adds, 64 images"``."""
        return (
            f"{self.precision} ({self.quantizer}): {len(self.quantized_nodes)} nodes quantized, "
            f"{len(self.float_nodes)} left in float, {len(self.residual_adds)} residual Adds, "
            f"{self.calibration_images} calibration images"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "summary": self.summary()}


def _input_name(proto: onnx.ModelProto) -> str:
    initializers = {t.name for t in proto.graph.initializer}
    return next(v.name for v in proto.graph.input if v.name not in initializers)


def _batches(calibration: np.ndarray) -> list[np.ndarray]:
    return [calibration[i : i + _CALIB_BATCH] for i in range(0, calibration.shape[0], _CALIB_BATCH)]
