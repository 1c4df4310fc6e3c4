"""Lint rules for explicitly quantized (Q/DQ) models, as TensorRT parses and fuses them."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from segdeploy.artifact import load_onnx

if TYPE_CHECKING:
    import onnx
from segdeploy.export.lint.report import LintIssue, Severity, _attr, _type_name

QDQ_RULES = {
    "qdq-zero-point": "QuantizeLinear/DequantizeLinear zero points must be constant zeros (TensorRT is symmetric)",
    "qdq-int8": "QuantizeLinear must produce INT8",
    "qdq-dequantize-input": "DequantizeLinear inputs must be INT8 (FP8/INT4 also parse); no INT32 biases, no UINT8",
    "qdq-activation-scale": "activation scales must be one positive constant (per-tensor)",
    "qdq-weight-axis": "per-channel weight scales on the output-channel axis: 0 for Conv, 1 for ConvTranspose",
    "qdq-float-conv": "in a quantized model, a Conv/ConvTranspose whose input or weights do not come from "
    "DequantizeLinear runs in float",
    "qdq-unpool": "no Q/DQ upstream of the unpooling comparisons (Equal/Where): quantized slots flip window choices",
}
"""The Q/DQ rules ``check_qdq`` applies, by rule name."""

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# Ops a quantized value passes through unchanged in resolution: a DequantizeLinear found upstream of a
# comparison through these means the comparison sees int8-rounded values.
_QDQ_TRANSPARENT_OPS = frozenset(
    {
        "Slice",
        "Max",
        "Min",
        "MaxPool",
        "Reshape",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Concat",
        "Split",
        "Identity",
        "Pad",
        "Gather",
        "Flatten",
        "Expand",
        "Relu",
        "Clip",
        "Cast",
        "DepthToSpace",
        "SpaceToDepth",
        "QuantizeLinear",
        "DequantizeLinear",
    }
)
_DEQUANTIZE_INPUT_TYPES = ("INT8", "FLOAT8E4M3FN", "INT4")


def check_qdq(model: str | os.PathLike[str] | onnx.ModelProto) -> list[LintIssue]:
    """The Q/DQ rules (``QDQ_RULES``) for explicitly quantized models; a float model gets none.

    Args:
        model: path to a ``.onnx`` file or a ``ModelProto``.

    Returns:
        The issues found, each tagged with its ``rule``.
    """
    from onnx import numpy_helper

    proto = load_onnx(model)
    graph = proto.graph
    if not any(node.op_type in _QDQ_OPS for node in graph.node):
        return []
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            tensor = next((a.t for a in node.attribute if a.name == "value"), None)
            if tensor is not None:
                values[node.output[0]] = numpy_helper.to_array(tensor)
    types = _inferred_types(proto)
    producers = {out: node for node in graph.node for out in node.output if out}
    issues: list[LintIssue] = []

    def add(severity: str, node: onnx.NodeProto, rule: str, message: str) -> None:
        issues.append(LintIssue(severity, node.name or node.output[0], node.op_type, message, rule))

    for node in graph.node:
        if node.op_type in _QDQ_OPS:
            for severity, rule, message in _qdq_node_problems(node, values, types, producers):
                add(severity, node, rule, message)
        elif node.op_type in ("Conv", "ConvTranspose"):
            for severity, rule, message in _conv_qdq_problems(node, values, producers):
                add(severity, node, rule, message)
        elif node.op_type in ("Equal", "Where"):
            inputs = node.input[:2] if node.op_type == "Equal" else node.input[:1]
            source = next((s for s in (_dequantized_upstream(name, producers) for name in inputs) if s), None)
            if source:
                add(
                    Severity.ERROR,
                    node,
                    "qdq-unpool",
                    f"{node.op_type} compares values that passed through Q/DQ ({source}): int8-rounded values "
                    "tie and flip the unpooling's window choices; keep the comparison chain in float",
                )
    return issues


def _qdq_node_problems(
    node: onnx.NodeProto, values: dict[str, Any], types: dict[str, int], producers: dict[str, onnx.NodeProto]
) -> list[tuple[str, str, str]]:
    import onnx

    problems = []
    scale_name = node.input[1] if len(node.input) > 1 else ""
    zero_name = node.input[2] if len(node.input) > 2 else ""
    zero_point = values.get(zero_name) if zero_name else None
    if zero_name and zero_point is None:
        problems.append(
            (Severity.ERROR, "qdq-zero-point", "the zero point is computed, not a constant; TensorRT needs zeros")
        )
    elif zero_point is not None and zero_point.size and (zero_point != 0).any():
        problems.append(
            (
                Severity.ERROR,
                "qdq-zero-point",
                f"zero point {_preview(zero_point)} is not 0: TensorRT supports symmetric quantization only",
            )
        )
    if node.op_type == "QuantizeLinear":
        quantized_type = _quantized_type(node, zero_name, values, types)
        if quantized_type != onnx.TensorProto.INT8:
            message = (
                f"QuantizeLinear produces {_type_name(quantized_type)}; TensorRT's INT8 path needs INT8 "
                "(an INT8 zero point of 0)"
            )
            problems.append((Severity.ERROR, "qdq-int8", message))
    else:
        source = node.input[0]
        quantized = producers.get(source)
        if source in values:
            input_type = _np_onnx_type(values[source])
        elif quantized is not None and quantized.op_type == "QuantizeLinear":
            zero = quantized.input[2] if len(quantized.input) > 2 else ""
            input_type = _quantized_type(quantized, zero, values, types)
        else:
            input_type = types.get(source, onnx.TensorProto.UNDEFINED)
        if input_type != onnx.TensorProto.UNDEFINED and _type_name(input_type) not in _DEQUANTIZE_INPUT_TYPES:
            what = " (an INT32 bias: keep biases float)" if input_type == onnx.TensorProto.INT32 else ""
            message = (
                f"DequantizeLinear input {source} is {_type_name(input_type)}{what}; TensorRT's parser "
                f"takes {', '.join(_DEQUANTIZE_INPUT_TYPES)} only"
            )
            problems.append((Severity.ERROR, "qdq-dequantize-input", message))
    scale = values.get(scale_name) if scale_name else None
    # Weights are stored int8 (DQ of a constant) or float (Q of a constant, then DQ, as ModelOpt writes them).
    source_node = producers.get(node.input[0])
    is_weight = node.input[0] in values or (
        node.op_type == "DequantizeLinear"
        and source_node is not None
        and source_node.op_type == "QuantizeLinear"
        and source_node.input[0] in values
    )
    if scale is None:
        problems.append(
            (
                Severity.ERROR,
                "qdq-activation-scale" if not is_weight else "qdq-weight-axis",
                "the scale is computed in the graph; TensorRT needs a constant scale",
            )
        )
    else:
        if not (scale > 0).all() or not _finite(scale):
            problems.append(
                (
                    Severity.ERROR,
                    "qdq-activation-scale" if not is_weight else "qdq-weight-axis",
                    f"scale {_preview(scale)} is not positive and finite",
                )
            )
        if not is_weight and scale.size != 1:
            message = (
                f"activation scale has {scale.size} values (axis {_attr(node, 'axis', 1)}); "
                "TensorRT quantizes activations per tensor"
            )
            problems.append((Severity.ERROR, "qdq-activation-scale", message))
    return problems


def _conv_qdq_problems(
    node: onnx.NodeProto, values: dict[str, Any], producers: dict[str, onnx.NodeProto]
) -> list[tuple[str, str, str]]:
    problems = []
    sources = [producers.get(name) for name in node.input[:2]]
    float_inputs = [
        what
        for what, source in zip(("input", "weights"), sources, strict=False)
        if source is None or source.op_type != "DequantizeLinear"
    ]
    if float_inputs:
        message = f"{' and '.join(float_inputs)} not fed by DequantizeLinear: this {node.op_type} runs in float"
        problems.append((Severity.WARNING, "qdq-float-conv", message))
    weight_dq = sources[1] if len(sources) > 1 else None
    weight = None
    if weight_dq is not None and weight_dq.op_type == "DequantizeLinear":
        weight = values.get(weight_dq.input[0])
        weight_q = producers.get(weight_dq.input[0])
        if weight is None and weight_q is not None and weight_q.op_type == "QuantizeLinear":
            weight = values.get(weight_q.input[0])
    if weight is not None:
        scale = values.get(weight_dq.input[1])
        if scale is not None and scale.size > 1:
            expected = 0 if node.op_type == "Conv" else 1
            axis = int(_attr(weight_dq, "axis", 1))
            axis = axis + weight.ndim if axis < 0 else axis
            if axis != expected:
                message = (
                    f"per-channel weight scales on axis {axis}; {node.op_type} needs axis {expected} "
                    "(its output channels)"
                )
                problems.append((Severity.ERROR, "qdq-weight-axis", message))
            elif weight.ndim > axis and weight.shape[axis] != scale.size:
                problems.append(
                    (
                        Severity.ERROR,
                        "qdq-weight-axis",
                        f"{scale.size} weight scales for {weight.shape[axis]} output channels",
                    )
                )
    return problems


def _dequantized_upstream(name: str, producers: dict[str, onnx.NodeProto]) -> str | None:
    """The DequantizeLinear feeding ``name`` through value-preserving ops, if any."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        node = producers.get(current)
        if current in seen or node is None:
            continue
        seen.add(current)
        if node.op_type == "DequantizeLinear":
            return node.name or current
        if node.op_type in _QDQ_TRANSPARENT_OPS:
            data_inputs = node.input if node.op_type in ("Max", "Min", "Concat") else node.input[:1]
            stack.extend(name for name in data_inputs if name)
    return None


def _quantized_type(node: onnx.NodeProto, zero_name: str, values: dict[str, Any], types: dict[str, int]) -> int:
    """The element type a QuantizeLinear produces: ``output_dtype``, else its zero point's, else UINT8."""
    import onnx

    output_dtype = _attr(node, "output_dtype", 0)
    if output_dtype:
        return int(output_dtype)
    if zero_name:
        if zero_name in values:
            return _np_onnx_type(values[zero_name])
        return types.get(zero_name, onnx.TensorProto.UNDEFINED)
    return onnx.TensorProto.UINT8


def _np_onnx_type(array: Any) -> int:
    import onnx

    return onnx.helper.np_dtype_to_tensor_dtype(array.dtype)


def _inferred_types(proto: onnx.ModelProto) -> dict[str, int]:
    import onnx

    graph = proto.graph
    try:
        graph = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # best effort: declared types still count
        pass
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*graph.input, *graph.output, *graph.value_info)
        if v.type.HasField("tensor_type")
    }
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _finite(array: Any) -> bool:
    import numpy as np

    return bool(np.isfinite(array.astype(np.float64)).all())


def _preview(array: Any) -> str:
    flat = array.reshape(-1)
    shown = ", ".join(f"{v:g}" for v in flat[:4].tolist())
    return f"[{shown}{', ...' if flat.size > 4 else ''}]" if flat.size != 1 else shown
