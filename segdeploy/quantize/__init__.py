"""INT8 ONNX with explicit QuantizeLinear/DequantizeLinear (Q/DQ) pairs, placed the way TensorRT fuses them.

TensorRT 11 has no implicit INT8 (no calibrators, no INT8 builder flag): an
INT8 engine comes from an ONNX whose Q/DQ nodes say where to quantize. This
module writes such a file from an FP32 export and calibration images.

The default backend is ONNX Runtime's ``quantize_static`` (QDQ format), with
settings TensorRT's parser and fusions need, which are not ORT's defaults
(see docs/int8.md for the measurements):

- only the inputs of Conv, ConvTranspose, MatMul and Gemm are quantized, not
  their outputs; everything else stays float. ORT's default op list also
  quantizes MaxPool, Slice, Where..., which puts Q/DQ on SegNet's unpooling
  slots and flipped 8-16% of its window choices;
- biases stay float: ORT's default stores them as INT32 DequantizeLinear
  inputs, which TensorRT's parser rejects;
- symmetric int8 activations and weights (zero points 0, as TensorRT requires),
  per-tensor activation scales, per-channel weight scales on the output-channel
  axis (0 for Conv, 1 for ConvTranspose);
- MatMul/Gemm inputs computed from the input's *shape* only (the
  adaptive-pooling rewrite's pooling matrices) stay float: their values change
  with the input size, so a scale calibrated at one size clips them at another;
- residual Adds: TensorRT fuses ``Conv -> Add`` when the Add's other (skip)
  input arrives through Q/DQ; that input gets the Q/DQ pair its tensor already
  has (or a new pair with a max-calibrated scale).

The optional ModelOpt backend (``nvidia-modelopt[onnx]``) places Q/DQ with
NVIDIA's own rules; it is never a base dependency. ModelOpt patches ONNX
Runtime's quantizer in the process it runs in (measured: ``quantize_static``
then fails on the next model), so use one backend per process.
"""

from __future__ import annotations

from segdeploy.quantize.calibration import load_calibration
from segdeploy.quantize.common import DEFAULT_CALIB_SIZE, QUANTIZERS, QuantizationReport
from segdeploy.quantize.int8 import quantize_int8
from segdeploy.quantize.modelopt import modelopt_available

__all__ = [
    "DEFAULT_CALIB_SIZE",
    "QUANTIZERS",
    "QuantizationReport",
    "load_calibration",
    "modelopt_available",
    "quantize_int8",
]
