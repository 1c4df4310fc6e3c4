"""FP16 ONNX with float32 inputs and outputs.

The conversion is onnxconverter-common's ``convert_float_to_float16`` with
``keep_io_types=True``, told which nodes stay FP32, followed by fix-ups for
what it gets wrong on exported segmentation graphs (checked by the tests):

- original ``Cast(to=FLOAT)`` nodes inside the FP16 region keep ``to=FLOAT``,
  so their outputs clash with the FP16 types around them (invalid model);
- neighbouring FP32 nodes are joined through a Cast to FP16 and back, which
  rounds what should stay FP32 (integers above 2048, Resize scales);
- a graph output produced by an FP32 node (a final Resize) comes out FP16;
- a Resize fed by a Constant gets FP16 scales (invalid model; onnxconverter-common
  issues 207, 272, 306), and inserted Casts can land out of topological order (its issue 208).

Which nodes stay FP32 (measured with ``benchmarks/fp16_drift.py`` and
``tests/test_precision.py`` on briefly trained models):

- shape arithmetic: every float node whose result does not depend on the
  input's values, only on its shape (the adaptive-pooling rewrite's pooling
  matrices and bin counts, float bin edges in user code, Resize scales). FP16
  holds integers exactly only up to 2048, so ``floor(i * W / o)`` computed in
  float goes wrong on wide inputs (tested at W = 6155); in FP32 it costs
  nothing, being computed once per shape, and the matrices are cast to FP16
  only where they meet the activations;
- ``DEFAULT_KEEP_FP32_OPS``: reductions and exponentials, plus
  onnxconverter-common's own block list (Resize, Max, Min, Range, TopK, CumSum,
  ...). ONNX Runtime's CPU kernels accumulate FP16 reductions in FP32, so
  keeping ReduceMean FP32 changed nothing measurable here; it stays because an
  FP16 accumulator (TensorRT may pick one) overflows 65504 when summing a
  512x512 map, and the cost is one Cast of the reduced input.

What stays FP16 on purpose, measured: MatMul with the pooling matrices and
the max-unpool rewrite's Equal/Where. Keeping either FP32 changed no output
bit in ONNX Runtime on trained models (its FP16 MatMul accumulates in FP32).
Equal compares the window's values with the window's max, and the rewrite takes
that max from the slot tensors themselves, so both sides are the same FP16 values.
A separate MaxPool would not give the same values: ONNX Runtime's CPU EP, lacking
FP16 Conv/Relu/MaxPool kernels at opset 17, runs them in FP32 without the casts
between, so such a MaxPool sees unrounded values and no slot equals it (docs/int8.md
has what that costs a trained SegNet). What FP16 changes is the encoder's values
themselves, and with them which slot holds the maximum (a fraction of a percent of
a trained SegNet's windows: benchmarks/results/precision.md): that shows up as argmax
agreement, and no cast around the comparison can undo it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from segdeploy.errors import ExportError, UserInputError

if TYPE_CHECKING:
    import onnx

# Ops whose FP16 versions lose accuracy: sums over many elements and exponentials.
DEFAULT_KEEP_FP32_OPS: tuple[str, ...] = (
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "GlobalAveragePool",
    "Softmax",
    "LogSoftmax",
    "Exp",
    "Pow",
)

# Ops whose outputs carry shapes, not the values of their inputs.
_SHAPE_OPS = frozenset({"Shape", "Size"})

_FLOAT16_MAX = 65504.0
_CONVERTER_WARNING = r"the float32 number .* will be truncated to"


def convert_to_fp16(
    model: onnx.ModelProto, *, keep_fp32_ops: Sequence[str] | None = None
) -> tuple[onnx.ModelProto, list[str]]:
    """Convert an FP32 ONNX model to FP16 compute with float32 inputs and outputs.

    Args:
        model: an FP32 model (left unchanged).
        keep_fp32_ops: op types computed in FP32; ``None`` means ``DEFAULT_KEEP_FP32_OPS``.
            Shape arithmetic and onnxconverter-common's block list stay FP32 regardless.

    Returns:
        ``(fp16_model, kept)``: the converted model, checked with ``onnx.checker``
        (full check), and the names of the nodes that compute in FP32, in graph order.

    Raises:
        UserInputError: the model already holds FP16 tensors or has no float32 input.
        ExportError: the converted graph does not type-check.
    """
    import onnx
    from onnxconverter_common import float16

    _check_convertible(model)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    name_unnamed_nodes(work.graph, "fp16pass")
    _unshare_initializers(work.graph)
    _isolate_graph_outputs(work.graph)
    # Exporters may declare initializers in value_info too; the converter would
    # then retype those entries and insert float-to-float Casts after them.
    initializer_names = {t.name for t in work.graph.initializer}
    declared = [v for v in work.graph.value_info if v.name not in initializer_names]
    del work.graph.value_info[:]
    work.graph.value_info.extend(declared)
    try:
        work = onnx.shape_inference.infer_shapes(work, strict_mode=True, data_prop=True)
    except Exception as exc:  # onnx raises several types here
        raise ExportError(
            f"cannot convert to FP16: shape inference failed on the FP32 model: {_first_line(exc)}"
        ) from None

    keep_ops = set(DEFAULT_KEEP_FP32_OPS if keep_fp32_ops is None else keep_fp32_ops)
    op_block_list = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | keep_ops)
    fp32_nodes = _fp32_node_names(work.graph, set(op_block_list))
    original_nodes = {node.name for node in work.graph.node}
    with warnings.catch_warnings():
        # It warns for every weight below 1e-7 it rounds; those become FP16 subnormals anyway.
        warnings.filterwarnings("ignore", message=_CONVERTER_WARNING)
        converted = float16.convert_float_to_float16(
            work,
            max_finite_val=_FLOAT16_MAX,
            keep_io_types=True,
            op_block_list=op_block_list,
            node_block_list=sorted(fp32_nodes),
        )

    graph = converted.graph
    _retarget_float_casts(graph, original_nodes - fp32_nodes)
    float32_outputs = {v.name for v in model.graph.output if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    _restore_float32_outputs(graph, float32_outputs)
    _collapse_cast_round_trips(graph)
    _tidy_casts(graph)
    _remove_dead_nodes(graph)
    topological_sort(graph)
    del graph.value_info[:]
    try:
        converted = onnx.shape_inference.infer_shapes(converted, strict_mode=True)
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        raise ExportError(f"FP16 conversion produced an invalid model: {_first_line(exc)}") from None
    types = _elem_types(converted)
    kept = [
        node.name
        for node in converted.graph.node
        if node.name in fp32_nodes and node.op_type not in _SHAPE_OPS and _touches_float32(node, types)
    ]
    return converted, kept


def fp16_weight_fraction(model: onnx.ModelProto) -> float:
    """Fraction of the float weight bytes (initializers and Constant values) stored as FP16.

    Returns:
        A number in [0, 1]; 0 for a model without float weights.
    """
    import onnx

    fp16_bytes = other_bytes = 0
    for tensor in _weights(model.graph):
        if tensor.data_type == onnx.TensorProto.FLOAT16:
            fp16_bytes += _tensor_bytes(tensor)
        elif tensor.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16):
            other_bytes += _tensor_bytes(tensor)
    total = fp16_bytes + other_bytes
    return fp16_bytes / total if total else 0.0


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2])[:300] if lines else type(exc).__name__


def _check_convertible(model: onnx.ModelProto) -> None:
    import onnx

    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in _weights(model.graph)) or any(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for v in [*model.graph.input, *model.graph.output]
    ):
        raise UserInputError("the model already holds FP16 tensors: convert the FP32 model to FP16 instead")
    if not any(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in model.graph.input):
        raise UserInputError("cannot convert to FP16: the model has no float32 input")


def _weights(graph: onnx.GraphProto) -> list[onnx.TensorProto]:
    tensors = list(graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            tensors += [attr.t for attr in node.attribute if attr.name == "value"]
    return tensors


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    import onnx

    count = 1
    for dim in tensor.dims:
        count *= dim
    itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        itemsize = 2
    return count * itemsize


def name_unnamed_nodes(graph: onnx.GraphProto, suffix: str) -> None:
    """Give every node a unique name (``OpType_index_suffix`` where it has none or a repeated one).

    The FP16 converter and the INT8 quantizers select and block nodes by name, so every node needs one.
    """
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}_{suffix}"
        seen.add(node.name)


def _unshare_initializers(graph: onnx.GraphProto) -> None:
    """Give every consumer of a shared float initializer its own copy.

    The exporter stores a constant once (the 2.0 of ``x.pow(2)`` and of ``2 * x``); when one consumer stays
    FP32 and another becomes FP16, the converter cannot type the shared tensor (measured: invalid model).
    """
    import onnx

    floats = {t.name: t for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    seen: dict[str, int] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name not in floats:
                continue
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                copy = onnx.TensorProto()
                copy.CopyFrom(floats[name])
                copy.name = f"{name}_copy{seen[name]}"
                graph.initializer.append(copy)
                node.input[index] = copy.name


def _isolate_graph_outputs(graph: onnx.GraphProto) -> None:
    """Give graph outputs that nodes also read an Identity of their own.

    With keep_io_types the converter casts such an output to float32 in place,
    and the FP16 nodes reading it then get float32 (measured: invalid model).
    """
    import onnx

    outputs = {v.name for v in graph.output}
    consumed = {name for node in graph.node for name in node.input} & outputs
    for name in consumed:
        inner = f"{name}_value"
        for node in graph.node:
            node.output[:] = [inner if out == name else out for out in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        graph.node.append(onnx.helper.make_node("Identity", [inner], [name], name=f"{name}_output"))


def _elem_types(model_or_graph: onnx.ModelProto | onnx.GraphProto) -> dict[str, int]:
    """Element type of every named tensor the graph declares or inference found."""
    graph = getattr(model_or_graph, "graph", model_or_graph)
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.input, *graph.output, *graph.value_info]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


def _fp32_node_names(graph: onnx.GraphProto, op_block_list: set[str]) -> set[str]:
    """Nodes to keep in FP32: blocked op types and float shape arithmetic.

    Shape arithmetic = nodes whose outputs do not depend on the graph inputs'
    values (reached only through Shape/Size, constants and initializers).
    A Constant stays FP32 when some consumer does; otherwise it becomes FP16 with it.
    """
    import onnx

    types = _elem_types(graph)
    value_dependent = {v.name for v in graph.input}
    blocked: set[str] = set()
    constants: list[onnx.NodeProto] = []
    for node in graph.node:
        depends_on_values = node.op_type not in _SHAPE_OPS and any(name in value_dependent for name in node.input)
        if depends_on_values:
            value_dependent.update(node.output)
        if node.op_type in op_block_list:
            blocked.add(node.name)
        elif node.op_type == "Constant":
            constants.append(node)
        elif (
            not depends_on_values
            and node.op_type not in _SHAPE_OPS
            and any(types.get(name) == onnx.TensorProto.FLOAT for name in [*node.input, *node.output] if name)
        ):
            blocked.add(node.name)
    consumers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    blocked |= _precision_sensitive(graph, value_dependent)
    for node in constants:
        if any(consumer in blocked for consumer in consumers.get(node.output[0], [])):
            blocked.add(node.name)
    return blocked


# Elementwise steps between a MatMul and the Softmax it feeds (GCU's soft assignment: distances to centers).
_SCORE_STEPS = frozenset({"Add", "Sub", "Mul", "Div", "Neg"})


def _precision_sensitive(graph: onnx.GraphProto, value_dependent: set[str]) -> set[str]:
    """MatMuls whose FP16 result is wrong by construction, and the steps that use them, kept FP32.

    - A MatMul divided by a count computed from the input's shape is a sum over pixels made a mean
      (GloRe's and GINet's projection to nodes): the FP16 sum overflows 65504 on large inputs before
      the division brings it back (measured: 1e5 at 1024x1024 with calibrated weights).
    - Scores a Softmax turns into weights, computed by MatMuls (distances to learned centers): large
      terms cancel, and FP16's 4-8 steps at 1e4 move the weights by up to 0.5 (measured on GCU).
    """
    producer = {out: node for node in graph.node for out in node.output}
    kept: set[str] = set()
    for node in graph.node:
        if node.op_type == "Div" and len(node.input) > 1 and node.input[1] not in value_dependent:
            source = producer.get(node.input[0])
            if source is not None and source.op_type == "MatMul":
                kept.update({node.name, source.name})
        if node.op_type in ("Softmax", "LogSoftmax"):
            stack, depth = [(node.input[0], 0)], 0
            while stack:
                name, depth = stack.pop()
                source = producer.get(name)
                if source is None or name not in value_dependent or depth > 8:
                    continue
                if source.op_type == "MatMul":
                    kept.add(source.name)
                elif source.op_type in _SCORE_STEPS:
                    kept.add(source.name)
                    stack.extend((inp, depth + 1) for inp in source.input if inp)
    return kept


def _retarget_float_casts(graph: onnx.GraphProto, fp16_node_names: set[str]) -> None:
    """Original ``Cast(to=FLOAT)`` nodes in the FP16 region must now produce FP16."""
    import onnx

    for node in graph.node:
        if node.op_type == "Cast" and node.name in fp16_node_names:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16


def _restore_float32_outputs(graph: onnx.GraphProto, float32_outputs: set[str]) -> None:
    """Cast back to float32 the outputs the converter left FP16 (those an FP32 node produced)."""
    import onnx

    for output in graph.output:
        if output.name in float32_outputs and output.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            fp16_name = f"{output.name}_fp16"
            for node in graph.node:
                node.output[:] = [fp16_name if name == output.name else name for name in node.output]
                node.input[:] = [fp16_name if name == output.name else name for name in node.input]
            graph.node.append(
                onnx.helper.make_node(
                    "Cast", [fp16_name], [output.name], to=onnx.TensorProto.FLOAT, name=f"{output.name}_cast_to_float32"
                )
            )
            output.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def _collapse_cast_round_trips(graph: onnx.GraphProto) -> None:
    """Let ``Cast(FLOAT)(Cast(FLOAT16)(x))`` read ``x`` directly when ``x`` is float32.

    The round trip is the converter's way of joining two FP32 nodes; it would
    round the value to FP16 in between. A round trip that ends in a graph output
    keeps its outer Cast (float32 to float32, a no-op) so the output's name stays.
    """
    import onnx

    types = _elem_types(graph)
    producer = {out: node for node in graph.node for out in node.output}
    graph_outputs = {v.name for v in graph.output}
    replacement: dict[str, str] = {}
    for node in graph.node:
        if not _is_cast_to(node, onnx.TensorProto.FLOAT):
            continue
        inner = producer.get(node.input[0])
        if inner is not None and _is_cast_to(inner, onnx.TensorProto.FLOAT16):
            source = inner.input[0]
            if types.get(source) == onnx.TensorProto.FLOAT:
                if node.output[0] in graph_outputs:
                    node.input[0] = source
                else:
                    replacement[node.output[0]] = source
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name in replacement:
                node.input[index] = replacement[name]


def _tidy_casts(graph: onnx.GraphProto) -> None:
    """Shape/Size read the tensor before any Cast; identical Casts of one tensor become one.

    The converter casts the graph input once per consumer, Shape nodes included.
    """
    producer = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in _SHAPE_OPS:
            source = producer.get(node.input[0])
            while source is not None and source.op_type == "Cast":
                node.input[0] = source.input[0]
                source = producer.get(node.input[0])
    first_cast: dict[tuple[str, int], str] = {}
    replacement: dict[str, str] = {}
    graph_outputs = {v.name for v in graph.output}
    for node in graph.node:
        if node.op_type != "Cast" or node.output[0] in graph_outputs:
            continue
        key = (node.input[0], next(a.i for a in node.attribute if a.name == "to"))
        if key in first_cast:
            replacement[node.output[0]] = first_cast[key]
        else:
            first_cast[key] = node.output[0]
    for node in graph.node:
        node.input[:] = [replacement.get(name, name) for name in node.input]


def _is_cast_to(node: onnx.NodeProto, elem_type: int) -> bool:
    return node.op_type == "Cast" and any(a.name == "to" and a.i == elem_type for a in node.attribute)


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes none of whose outputs is used (the Casts the round-trip collapse orphaned)."""
    needed = {v.name for v in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(name in needed for name in node.output):
            keep.append(node)
            needed.update(name for name in node.input if name)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)


def topological_sort(graph: onnx.GraphProto, what: str = "FP16 conversion") -> None:
    """Order nodes so every input is produced before use (stable for already sorted graphs).

    Raises:
        ExportError: an input nothing produces (``what`` names the step that left it).
    """
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        still_pending = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                still_pending.append(node)
        if len(still_pending) == len(pending):
            missing = sorted({n for node in pending for n in node.input if n not in available})[:3]
            raise ExportError(f"{what} left a graph with undefined inputs: {', '.join(missing)}")
        pending = still_pending
    del graph.node[:]
    graph.node.extend(ordered)


def _touches_float32(node: onnx.NodeProto, types: dict[str, int]) -> bool:
    import onnx

    return any(types.get(name) == onnx.TensorProto.FLOAT for name in [*node.input, *node.output] if name)
