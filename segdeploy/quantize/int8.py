"""``quantize_int8``: an FP32 ONNX to INT8 Q/DQ, with either backend; checks and the FP16 remainder."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.errors import ExportError, UserInputError, first_line
from segdeploy.quantize.common import FP16_QDQ_OPSET, QUANTIZERS, QuantizationReport

if TYPE_CHECKING:
    import onnx
from segdeploy.quantize.modelopt import _quantize_modelopt, _require_modelopt
from segdeploy.quantize.ort_backend import _quantize_ort


def quantize_int8(
    model: onnx.ModelProto | str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    quantizer: str = "ort",
    fp16: bool = False,
    residual_adds: bool = True,
) -> tuple[onnx.ModelProto, QuantizationReport]:
    """Insert Q/DQ pairs into an FP32 ONNX model, calibrated on ``calibration``.

    Args:
        model: an FP32 ``ModelProto`` (left unchanged) or a path to one; input ``[N, C, H, W]``.
        calibration: float32 ``[n, C, H, W]`` preprocessed inputs (``load_calibration``).
        quantizer: ``"ort"`` (ONNX Runtime, default) or ``"modelopt"`` (NVIDIA ModelOpt, an optional extra).
        fp16: compute the non-quantized part in FP16 (``"int8-fp16"``), inputs and outputs
            staying float32; needs opset >= 19, where Q/DQ scales may be FP16.
        residual_adds: give the skip input of ``Conv -> Add`` residual joins a Q/DQ pair
            (TensorRT's placement guide), ORT backend only.

    Returns:
        ``(quantized_model, report)``; the model keeps the input's dynamic axes and metadata,
        with ``precision`` set to ``int8`` or ``int8-fp16`` and ``quantizer`` added.

    Raises:
        UserInputError: unknown quantizer, bad calibration array, a model that is not FP32,
            or ``fp16`` below opset 19.
        MissingDependencyError: ``quantizer="modelopt"`` without ModelOpt installed.
        ExportError: the quantizer failed or wrote an invalid model.
    """
    from segdeploy.artifact import load_onnx

    if quantizer not in QUANTIZERS:
        raise UserInputError(f"unknown quantizer {quantizer!r}: choose {' or '.join(QUANTIZERS)}")
    if quantizer == "modelopt":
        _require_modelopt()
    proto = load_onnx(model)
    _check_quantizable(proto, fp16)
    calibration = _check_calibration(proto, calibration)
    started = time.perf_counter()
    precision = "int8-fp16" if fp16 else "int8"
    report = QuantizationReport(quantizer=quantizer, precision=precision, calibration_images=int(calibration.shape[0]))
    if quantizer == "ort":
        quantized = _quantize_ort(proto, calibration, report, residual_adds)
    else:
        quantized = _quantize_modelopt(proto, calibration, report, fp16)
    if fp16 and quantizer == "ort":
        quantized = _to_fp16(quantized, report)
    _finish(quantized, proto, report)
    report.seconds = time.perf_counter() - started
    return quantized, report


def _opset(proto: onnx.ModelProto) -> int:
    return next((imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), 0)


def _check_quantizable(proto: onnx.ModelProto, fp16: bool) -> None:
    import onnx

    ops = {node.op_type for node in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        raise UserInputError("the model is already quantized: quantize the FP32 export instead")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        raise UserInputError("the model holds FP16 weights: quantize the FP32 export (int8-fp16 converts afterwards)")
    inputs = [v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise UserInputError("quantize_int8 needs a model with one float32 input [N, C, H, W]")
    if fp16 and _opset(proto) < FP16_QDQ_OPSET:
        raise UserInputError(
            f"int8-fp16 needs opset {FP16_QDQ_OPSET} or later (FP16 Q/DQ scales); this model is opset "
            f"{_opset(proto)}: export it with --opset {FP16_QDQ_OPSET}"
        )


def _check_calibration(proto: onnx.ModelProto, calibration: Any) -> np.ndarray:
    if calibration is None:
        raise UserInputError("INT8 quantization needs calibration data: pass images or an .npy (--calib PATH)")
    data = np.asarray(calibration)
    if data.dtype != np.float32 or data.ndim != 4 or data.shape[0] < 1 or min(data.shape) < 1:
        raise UserInputError(
            f"calibration data must be float32 [N, C, H, W] with N >= 1; got {data.dtype} {tuple(data.shape)}"
        )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value != data.shape[1]:
        raise UserInputError(f"calibration data has {data.shape[1]} channels; the model takes {dims[1].dim_value}")
    if not np.isfinite(data).all():
        raise UserInputError("calibration data holds NaN or infinite values")
    return np.ascontiguousarray(data)


def _to_fp16(model: onnx.ModelProto, report: QuantizationReport) -> onnx.ModelProto:
    """The non-quantized part in FP16; Q/DQ scales become FP16 too, so DequantizeLinear outputs FP16."""
    import onnx

    from segdeploy.precision import convert_to_fp16

    converted, kept = convert_to_fp16(model)
    # The conversion keeps nodes that read only initializers in FP32 (it cannot tell weight
    # dequantization from shape arithmetic) and casts their output: make those scales FP16 instead,
    # so each Conv reads its weights straight from a DequantizeLinear, as TensorRT fuses them.
    kept = set(kept) - _fp16_weight_dequantize(converted.graph)
    if kept:
        report.notes.append(f"FP32 kept by the FP16 conversion: {', '.join(sorted(kept))}")
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        raise ExportError(f"the int8-fp16 model is invalid: {first_line(exc)}") from None
    return converted


def _fp16_weight_dequantize(graph: onnx.GraphProto) -> set[str]:
    """``DQ(int8 W, fp32 scale) -> Cast(FLOAT16)`` becomes ``DQ(int8 W, fp16 scale)``; returns the DQ names."""
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {v.name for v in graph.output}
    replacement: dict[str, str] = {}
    changed, dropped = set(), set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers or node.output[0] in graph_outputs:
            continue
        scale = initializers.get(node.input[1])
        users = consumers.get(node.output[0], [])
        if scale is None or scale.data_type != onnx.TensorProto.FLOAT or len(consumers.get(scale.name, [])) != 1:
            continue
        if not users or not all(
            user.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in user.attribute)
            for user in users
        ):
            continue
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale).astype(np.float16), scale.name))
        for user in users:
            replacement[user.output[0]] = node.output[0]
            dropped.add(id(user))
        changed.add(node.name)
    kept_nodes = [node for node in graph.node if id(node) not in dropped]
    for node in kept_nodes:
        node.input[:] = [replacement.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.value_info[:]
    return changed


def _finish(quantized: onnx.ModelProto, original: onnx.ModelProto, report: QuantizationReport) -> None:
    """Metadata, then the checks every quantized file must pass."""
    import onnx

    metadata = {prop.key: prop.value for prop in original.metadata_props}
    metadata.update(precision=report.precision, quantizer=report.quantizer)
    if "opset" in metadata:  # ModelOpt may raise the opset
        metadata["opset"] = str(_opset(quantized))
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    quantized.ir_version = min(quantized.ir_version, original.ir_version) or original.ir_version
    del quantized.graph.value_info[:]
    try:
        onnx.checker.check_model(quantized, full_check=True)
    except Exception as exc:
        raise ExportError(f"the quantized model is invalid: {first_line(exc)}") from None
