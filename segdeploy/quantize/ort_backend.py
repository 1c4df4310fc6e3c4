"""ONNX Runtime's quantizer with the placement TensorRT needs (see the package docstring)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.errors import ExportError, UserInputError, first_line
from segdeploy.quantize.common import (
    _CONV_OPS,
    _INT8_MAX,
    _SHAPE_OPS,
    QUANTIZED_OPS,
    QuantizationReport,
    _batches,
    _input_name,
)

if TYPE_CHECKING:
    import onnx


def _quantize_ort(
    proto: onnx.ModelProto, calibration: np.ndarray, report: QuantizationReport, residual_adds: bool
) -> onnx.ModelProto:
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from segdeploy.precision import name_unnamed_nodes

    input_name = _input_name(proto)
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    name_unnamed_nodes(work.graph, "int8pass")
    selected, skipped = _nodes_to_quantize(work.graph)
    report.float_nodes.extend(skipped)
    if not selected:
        raise ExportError("nothing to quantize: the model has no Conv, ConvTranspose, MatMul or Gemm on activations")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(_batches(calibration))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    # ORT nags about its pre-processing step; the export already simplified the graph.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with tempfile.TemporaryDirectory(prefix="segdeploy-int8-") as tmp:
            source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(work, source)
            quantize_static(
                str(source),
                str(target),
                Reader(),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_quantize=selected,
                per_channel=True,
                reduce_range=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "QuantizeBias": False,
                    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                    "QDQOpTypePerChannelSupportToAxis": {"Conv": 0, "ConvTranspose": 1},
                },
            )
            quantized = onnx.load(str(target))
    except (UserInputError, ExportError):
        raise
    except Exception as exc:  # ORT raises plain ValueError/RuntimeError/Fail on graphs it cannot handle
        raise ExportError(f"ONNX Runtime quantization failed: {first_line(exc)}") from None
    finally:
        root.setLevel(level)
    report.quantized_nodes.extend(selected)
    if residual_adds:
        report.residual_adds.extend(_quantize_residual_adds(quantized, work, calibration))
    return quantized


def _value_dependent(graph: onnx.GraphProto) -> set[str]:
    """Tensors whose values depend on the graph inputs' values (not only on their shapes)."""
    initializers = {t.name for t in graph.initializer}
    dependent = {v.name for v in graph.input if v.name not in initializers}
    grew = True
    while grew:  # to a fixed point: quantizers do not keep nodes in topological order
        size = len(dependent)
        for node in graph.node:
            if node.op_type not in _SHAPE_OPS and any(name in dependent for name in node.input):
                dependent.update(node.output)
        grew = len(dependent) > size
    return dependent


def _constants(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _nodes_to_quantize(graph: onnx.GraphProto) -> tuple[list[str], list[str]]:
    """Names of the nodes whose inputs get Q/DQ, and ``"name: reason"`` for those left in float."""
    dependent = _value_dependent(graph)
    constants = _constants(graph)
    selected, skipped = [], []
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        inputs = [name for name in node.input[:2] if name]
        if node.op_type in _CONV_OPS and inputs[1:] and inputs[1] not in constants:
            skipped.append(f"{node.name}: weights computed in the graph, not stored")
        elif not any(name in dependent for name in inputs):
            skipped.append(f"{node.name}: computes on shapes only")
        elif any(name not in dependent and name not in constants for name in inputs):
            skipped.append(f"{node.name}: an input depends on the input size only (e.g. a pooling matrix)")
        else:
            selected.append(node.name)
    return selected, skipped


def _quantize_residual_adds(model: onnx.ModelProto, fp32: onnx.ModelProto, calibration: np.ndarray) -> list[str]:
    """Route the skip input of each ``Conv -> Add`` join through Q/DQ; returns those Adds.

    An Add qualifies when both inputs are float activations and one comes
    straight from a Conv/ConvTranspose (the one TensorRT fuses the Add into).
    The other input reuses the Q/DQ pair its tensor already has for a quantized
    consumer; a tensor without one gets a new pair, its scale max |x| / 127 over
    the calibration data, measured on ``fp32`` (the model before quantization,
    which has the same tensor names).
    """
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    dependent = _value_dependent(graph)
    dequantized = _existing_qdq(graph)
    targets: list[tuple[onnx.NodeProto, int]] = []
    changed: list[str] = []
    for node in graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or not all(name in dependent for name in node.input):
            continue
        sources = [producer.get(name) for name in node.input]
        from_conv = [source is not None and source.op_type in _CONV_OPS for source in sources]
        if not any(from_conv):
            continue
        # The skip input: the one not produced by a Conv, or the second when both are.
        skip = 1 if from_conv[0] else 0
        if sources[skip] is not None and sources[skip].op_type == "DequantizeLinear":
            changed.append(node.name)  # ORT already routes it through the pair of a quantized consumer
        else:
            targets.append((node, skip))
    missing = sorted({node.input[skip] for node, skip in targets if node.input[skip] not in dequantized})
    scales = _max_scales(fp32, calibration, missing) if missing else {}
    for node, skip in targets:
        name = node.input[skip]
        if name not in dequantized:
            scale = scales.get(name)
            if scale is None or not np.isfinite(scale) or scale <= 0:
                continue
            dequantized[name] = _insert_qdq(graph, name, scale)
        node.input[skip] = dequantized[name]
        changed.append(node.name)
    from segdeploy.precision import topological_sort

    topological_sort(graph, "quantization")
    return changed


def _existing_qdq(graph: onnx.GraphProto) -> dict[str, str]:
    """tensor -> output of the per-tensor DequantizeLinear that ``Q -> DQ`` of that tensor produces."""
    producer = {out: node for node in graph.node for out in node.output}
    initializers = {t.name for t in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in initializers:
            continue
        quantize = producer.get(node.input[0])
        if quantize is not None and quantize.op_type == "QuantizeLinear":
            found.setdefault(quantize.input[0], node.output[0])
    return found


def _max_scales(model: onnx.ModelProto, calibration: np.ndarray, names: list[str]) -> dict[str, float]:
    """max |x| / 127 of each named tensor of an FP32 model over the calibration data."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {v.name for v in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    # Unoptimised: ONNX Runtime's fusions (Conv + Add) may drop the very tensors asked for.
    session = _session(probe, optimize=False)
    input_name = _input_name(model)
    maxima = dict.fromkeys(names, 0.0)
    for batch in _batches(calibration):
        values = session.run(names, {input_name: batch})
        for name, value in zip(names, values, strict=True):
            maxima[name] = max(maxima[name], float(np.max(np.abs(value))) if value.size else 0.0)
    return {name: value / _INT8_MAX for name, value in maxima.items()}


def _insert_qdq(graph: onnx.GraphProto, name: str, scale: float) -> str:
    import onnx
    from onnx import numpy_helper

    base = f"{name}_residual"
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"),
            numpy_helper.from_array(np.array(0, np.int8), f"{base}_zero_point"),
        ]
    )
    graph.node.extend(
        [
            onnx.helper.make_node(
                "QuantizeLinear",
                [name, f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_q"],
                name=f"{base}_QuantizeLinear",
            ),
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{base}_q", f"{base}_scale", f"{base}_zero_point"],
                [f"{base}_dq"],
                name=f"{base}_DequantizeLinear",
            ),
        ]
    )
    return f"{base}_dq"


def _session(model: onnx.ModelProto, *, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
