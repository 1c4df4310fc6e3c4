"""NVIDIA ModelOpt as the quantizer: an optional extra, never a base dependency."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segdeploy.errors import ExportError, MissingDependencyError, first_line
from segdeploy.quantize.common import _MODELOPT_EXTRA, QUANTIZED_OPS, QuantizationReport, _input_name

if TYPE_CHECKING:
    import onnx


def modelopt_available() -> bool:
    """True when ``modelopt.onnx.quantization`` imports."""
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything on import
        return False
    return True


def _require_modelopt() -> None:
    if not modelopt_available():
        raise MissingDependencyError(f"--quantizer modelopt needs NVIDIA ModelOpt: {_MODELOPT_EXTRA}")


def _quantize_modelopt(
    proto: onnx.ModelProto, calibration: np.ndarray, report: QuantizationReport, fp16: bool
) -> onnx.ModelProto:
    import onnx
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="segdeploy-modelopt-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, source)
        try:
            quantize(
                onnx_path=str(source),
                quantize_mode="int8",
                calibration_data={_input_name(proto): calibration},
                calibration_method="max",
                calibration_eps=["cpu"],
                output_path=str(target),
                high_precision_dtype="fp16" if fp16 else "fp32",
                # ModelOpt quantizes MaxPool inputs, and with them the unpooling rewrite's slots.
                nodes_to_exclude=_unpool_pools(proto.graph) or None,
                log_level="ERROR",
            )
            quantized = onnx.load(str(target))
        except Exception as exc:  # ModelOpt raises many types
            raise ExportError(f"ModelOpt quantization failed: {first_line(exc)}") from None
    conv_like = [node.name for node in quantized.graph.node if node.op_type in QUANTIZED_OPS]
    fed = _fed_by_dequantize(quantized.graph)
    report.quantized_nodes.extend(name for name in conv_like if name in fed)
    report.float_nodes.extend(f"{name}: left in float by ModelOpt" for name in conv_like if name not in fed)
    return quantized


def _unpool_pools(graph: onnx.GraphProto) -> list[str]:
    """MaxPool nodes whose input also feeds an unpooling comparison (Equal), through slices and maxima."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_equal(name: str) -> bool:
        seen, stack = set(), [name]
        while stack:
            current = stack.pop()
            for user in consumers.get(current, []):
                if user.op_type == "Equal":
                    return True
                if user.op_type in ("Slice", "Max") and user.output[0] not in seen:
                    seen.add(user.output[0])
                    stack.append(user.output[0])
        return False

    pools = [node for node in graph.node if node.op_type == "MaxPool" and node.name]
    return [node.name for node in pools if reaches_equal(node.input[0])]


def _fed_by_dequantize(graph: onnx.GraphProto) -> set[str]:
    producer = {out: node for node in graph.node for out in node.output}
    return {
        node.name
        for node in graph.node
        if node.input and (source := producer.get(node.input[0])) is not None and source.op_type == "DequantizeLinear"
    }
