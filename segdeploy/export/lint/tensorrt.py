"""Static TensorRT 10 compatibility check of an ONNX file, without TensorRT.

The data below is ours, written from onnx/onnx-tensorrt (branch 10.1-GA):
``docs/operators.md`` (the operator support matrix) and the parser's static
op checkers (``onnxOpCheckers.cpp``), keeping the restrictions that matter for
segmentation networks. The lint cannot prove that TensorRT will build an
engine (that needs TensorRT and a GPU); it catches what the parser is known to
refuse, before anyone gets there.

Notes on what is *not* flagged: TensorRT 10 supports INT64 natively (the
TensorRT 8 cast-down to INT32 is gone), so int64 shape arithmetic gets no
warning; DOUBLE is accepted but cast down to FLOAT, hence a warning.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from segdeploy.artifact import SUPPORTED_OPSETS, load_onnx
from segdeploy.errors import first_line

if TYPE_CHECKING:
    import onnx
from segdeploy.export.lint.qdq import check_qdq
from segdeploy.export.lint.report import LintIssue, LintReport, Severity, _attr, _type_name
from segdeploy.export.lint.sizes import baked_sizes

# Operators TensorRT 10's ONNX parser imports ("Y" in onnx-tensorrt's docs/operators.md).
TRT10_SUPPORTED_OPS = frozenset(
    """
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
    Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
    DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
    GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
    GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
    IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
    MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot
    Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
    RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
    ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
    ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
    Transpose Trilu Unsqueeze Upsample Where Xor
    """.split()
)

# Operators the matrix lists as unsupported ("N").
TRT10_UNSUPPORTED_OPS = frozenset(
    """
    AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow Col2Im CenterCropPad
    Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow ImageDecoder
    MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional
    OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt
    SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap
    SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique
    """.split()
)

# Domains whose ops TensorRT resolves through its plugin registry (e.g. ONNX-GraphSurgeon plugin nodes).
TRT_PLUGIN_DOMAINS = frozenset({"trt.plugins", "trt"})
_DEFAULT_DOMAINS = ("", "ai.onnx")

RESIZE_MODES = frozenset({"nearest", "linear", "cubic"})
RESIZE_COORDINATE_MODES = frozenset(
    {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
)
RESIZE_NEAREST_MODES = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

# Inputs the matrix says "must be an initializer" (index -> what), for ops segmentation graphs use.
_CONSTANT_INPUTS = {
    "Slice": {3: "axes"},
    "Squeeze": {1: "axes"},
    "Unsqueeze": {1: "axes"},
    "Pad": {3: "axes"},
    "CumSum": {1: "axis"},
    "TopK": {1: "K"},
    **{
        op: {1: "axes"}
        for op in (
            "ReduceL1",
            "ReduceL2",
            "ReduceLogSum",
            "ReduceLogSumExp",
            "ReduceMax",
            "ReduceMean",
            "ReduceMin",
            "ReduceProd",
            "ReduceSum",
            "ReduceSumSquare",
        )
    },
}

_UNPOOL_HINT = "export with `segdeploy export`, which rewrites max-pool indices and unpooling into plain ops"


def lint_onnx(model: str | os.PathLike[str] | onnx.ModelProto, *, checker: bool = True) -> LintReport:
    """Check an ONNX model against what TensorRT 10's ONNX parser accepts.

    Args:
        model: path to a ``.onnx`` file or a ``ModelProto``.
        checker: also run ``onnx.checker`` (a model that fails it gets a warning); the export pipeline,
            which has just run the full check, skips it.

    Returns:
        A ``LintReport``; ``.ok`` is False when an error-level issue was found.

    Raises:
        UserInputError: the file is missing or not a valid ONNX model.
    """
    import onnx

    proto = load_onnx(model)
    opset = next((imp.version for imp in proto.opset_import if imp.domain in _DEFAULT_DOMAINS), None)
    report = LintReport(opset=opset, ir_version=int(proto.ir_version))
    issues = report.issues

    if opset is None:
        issues.append(LintIssue(Severity.ERROR, "-", "-", "the model imports no default-domain (ai.onnx) opset"))
    elif opset not in SUPPORTED_OPSETS:
        issues.append(
            LintIssue(
                Severity.ERROR,
                "-",
                "-",
                f"opset {opset} is outside the range segdeploy supports "
                f"({SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}); re-export with --opset 17",
            )
        )

    try:
        if checker:
            onnx.checker.check_model(proto)
    except Exception as exc:  # ValidationError, or a C++ error for malformed protos
        first = first_line(exc)
        issues.append(LintIssue(Severity.WARNING, "-", "-", f"onnx.checker: {first}"))

    functions = {(f.domain, f.name): f for f in proto.functions}
    producers = _producers(proto.graph)
    constants = _constant_names(proto.graph)
    for node, where in _walk(proto.graph, functions):
        report.node_count += 1
        issues.extend(_check_node(node, where, functions, producers, constants))
    issues.extend(_check_types(proto))
    issues.extend(_check_uint8_inputs(proto))
    issues.extend(check_qdq(proto))
    trace = _trace_hw(proto)
    if trace is not None:
        issues.extend(baked_sizes(proto, trace))
    return report


def _trace_hw(proto: onnx.ModelProto) -> tuple[int, int] | None:
    """The traced height and width a segdeploy file records (None for other files)."""
    text = next((p.value for p in proto.metadata_props if p.key == "trace_shape"), "")
    parts = text.lower().split("x")
    if len(parts) != 4 or not all(p.strip().isdigit() for p in parts):
        return None
    return int(parts[2]), int(parts[3])


def _check_uint8_inputs(proto: onnx.ModelProto) -> list[LintIssue]:
    """TensorRT takes a UINT8 network input only when every consumer is a Cast: cast first, then transpose."""
    import onnx

    initializers = {t.name for t in proto.graph.initializer}
    issues = []
    for value in proto.graph.input:
        if value.name in initializers or value.type.tensor_type.elem_type != onnx.TensorProto.UINT8:
            continue
        for node in proto.graph.node:
            if value.name in node.input and node.op_type != "Cast":
                issues.append(LintIssue(
                    Severity.ERROR, node.name or node.output[0], node.op_type,
                    f"the uint8 input {value.name!r} feeds {node.op_type}: TensorRT needs a uint8 input to feed a "
                    "Cast directly (cast to float first, then transpose or normalize)",
                ))  # fmt: skip
    return issues


def _walk(graph: onnx.GraphProto, functions: dict, prefix: str = "") -> Iterator[tuple[onnx.NodeProto, str]]:
    """Every node, including those in If/Loop/Scan bodies and in local functions (which TensorRT inlines)."""
    import onnx

    for index, node in enumerate(graph.node):
        where = prefix + (node.name or (node.output[0] if node.output else f"#{index}"))
        yield node, where
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _walk(attr.g, functions, where + "/")
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _walk(sub, functions, where + "/")
        function = functions.get((node.domain, node.op_type))
        if function is not None:
            for f_index, f_node in enumerate(function.node):
                yield f_node, f"{where}/{f_node.name or f'#{f_index}'}"


def _producers(graph: onnx.GraphProto) -> dict[str, tuple[onnx.NodeProto, int]]:
    return {out: (node, i) for node in graph.node for i, out in enumerate(node.output) if out}


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _check_node(
    node: onnx.NodeProto,
    where: str,
    functions: dict,
    producers: dict[str, tuple[onnx.NodeProto, int]],
    constants: set[str],
) -> list[LintIssue]:
    op = node.op_type

    def issue(severity: str, message: str) -> LintIssue:
        return LintIssue(severity, where, op, message)

    if node.domain not in _DEFAULT_DOMAINS:
        if (node.domain, op) in functions:
            return []  # a local function: its body is walked and checked
        if node.domain in TRT_PLUGIN_DOMAINS:
            return [
                issue(
                    Severity.WARNING,
                    f"plugin op {node.domain}::{op}: the plugin must be registered with TensorRT at build time",
                )
            ]
        return [
            issue(
                Severity.ERROR,
                f"custom op {node.domain}::{op} is not standard ONNX and not a TensorRT plugin domain "
                f"({', '.join(sorted(TRT_PLUGIN_DOMAINS))}); TensorRT's parser cannot import it",
            )
        ]
    if op == "MaxUnpool":
        return [issue(Severity.ERROR, f"MaxUnpool is not supported by TensorRT 10's ONNX parser; {_UNPOOL_HINT}")]
    if op in TRT10_UNSUPPORTED_OPS:
        return [issue(Severity.ERROR, f"{op} is not supported by TensorRT 10's ONNX parser")]
    if op not in TRT10_SUPPORTED_OPS:
        return [issue(Severity.ERROR, f"{op} is not in TensorRT 10's ONNX operator support matrix")]

    found: list[LintIssue] = []
    if op == "MaxPool" and len(node.output) > 1:
        found.append(
            issue(
                Severity.ERROR,
                f"MaxPool with an Indices output (max_pool2d(return_indices=True)) is not supported "
                f"by TensorRT; {_UNPOOL_HINT}",
            )
        )
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", [])
        if len(kernel) not in (2, 3):
            found.append(issue(Severity.ERROR, f"{op} over {len(kernel)} spatial dims: TensorRT pools 2D or 3D only"))
        if any(d != 1 for d in _attr(node, "dilations", [])):
            found.append(
                issue(Severity.ERROR, f"{op} with dilations {list(_attr(node, 'dilations'))}: TensorRT needs all ones")
            )
    if op == "ScatterND":
        reduction = _attr(node, "reduction")
        if reduction is not None and reduction != "none":
            found.append(issue(Severity.ERROR, f"ScatterND with reduction={reduction!r} is not supported by TensorRT"))
        elif reduction == "none":
            found.append(
                issue(
                    Severity.WARNING,
                    "ScatterND carries an explicit reduction='none' attribute, which TensorRT "
                    "10.0/10.1 parsers refuse; drop the attribute",
                )
            )
        if len(node.input) > 1 and _comes_from_maxpool_indices(node.input[1], producers):
            found.append(
                issue(
                    Severity.ERROR,
                    f"ScatterND writes through MaxPool indices (a stock max_unpool export); {_UNPOOL_HINT}",
                )
            )
    if op == "Resize":
        found.extend(issue(sev, msg) for sev, msg in _resize_problems(node))
    if op == "Upsample" and _attr(node, "mode", "nearest") not in ("nearest", "linear", "bilinear"):
        found.append(
            issue(Severity.ERROR, f"Upsample mode {_attr(node, 'mode')!r}: TensorRT supports nearest and linear")
        )
    if op == "BatchNormalization" and _attr(node, "training_mode", 0):
        found.append(issue(Severity.ERROR, "BatchNormalization in training mode: export the model in eval() mode"))
    if op == "LayerNormalization" and sum(1 for out in node.output if out) > 1:
        found.append(issue(Severity.ERROR, "LayerNormalization: TensorRT supports only the first output (Y)"))
    if op == "TopK" and _attr(node, "sorted", 1) != 1:
        found.append(issue(Severity.ERROR, "TopK with sorted=0: TensorRT needs sorted=1"))
    if op == "Constant" and any(a.name in ("sparse_value", "value_string", "value_strings") for a in node.attribute):
        found.append(issue(Severity.ERROR, "Constant with a sparse or string value is not supported by TensorRT"))
    if op == "Cast":
        to = _attr(node, "to")
        if to is not None and _type_problem(to) == Severity.ERROR:
            found.append(issue(Severity.ERROR, f"Cast to {_type_name(to)}, a type TensorRT does not support"))
    if op == "LpNormalization" and _attr(node, "p", 2) not in (1, 2):
        found.append(issue(Severity.ERROR, "LpNormalization: TensorRT supports p=1 and p=2 only"))
    for index, what in _CONSTANT_INPUTS.get(op, {}).items():
        if len(node.input) > index and node.input[index] and node.input[index] not in constants:
            found.append(
                issue(
                    Severity.ERROR,
                    f"{op}: input {what!r} must be an initializer or constant for TensorRT (run onnxsim to fold it)",
                )
            )
    return found


def _resize_problems(node: onnx.NodeProto) -> list[tuple[str, str]]:
    problems = []
    mode = _attr(node, "mode", "nearest")
    ctm = _attr(node, "coordinate_transformation_mode", "half_pixel")
    nearest = _attr(node, "nearest_mode", "round_prefer_floor")
    if mode not in RESIZE_MODES:
        problems.append((Severity.ERROR, f"Resize mode {mode!r} is not one TensorRT supports (nearest, linear, cubic)"))
    elif mode == "cubic":
        # The parser maps cubic to IResizeLayer's bicubic mode, which resizes only the two innermost axes and
        # is absent from the documented matrix: build it, but check parity.
        problems.append(
            (
                Severity.WARNING,
                "Resize mode 'cubic': TensorRT resizes only the two innermost axes bicubically "
                "and documents nearest/linear; verify parity",
            )
        )
    if ctm not in RESIZE_COORDINATE_MODES:
        problems.append(
            (
                Severity.ERROR,
                f"Resize coordinate_transformation_mode {ctm!r} is not supported by TensorRT "
                f"(supported: {', '.join(sorted(RESIZE_COORDINATE_MODES))})",
            )
        )
    if mode == "nearest" and nearest not in RESIZE_NEAREST_MODES:
        problems.append((Severity.ERROR, f"Resize nearest_mode {nearest!r} is not supported by TensorRT"))
    if ctm == "tf_half_pixel_for_nn" and nearest != "round_prefer_floor":
        problems.append(
            (Severity.ERROR, "Resize tf_half_pixel_for_nn works in TensorRT only with nearest_mode round_prefer_floor")
        )
    if _attr(node, "antialias", 0):
        problems.append((Severity.ERROR, "Resize with antialias=1 is not supported by TensorRT"))
    if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
        problems.append((Severity.ERROR, "Resize keep_aspect_ratio_policy must be 'stretch' for TensorRT"))
    axes = list(_attr(node, "axes", []))
    if len(set(axes)) != len(axes):
        problems.append((Severity.ERROR, f"Resize axes {axes} repeat an axis"))
    return problems


def _comes_from_maxpool_indices(name: str, producers: dict[str, tuple[onnx.NodeProto, int]]) -> bool:
    """True when ``name`` is computed (through any ops) from a MaxPool ``Indices`` output."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        current = stack.pop()
        if current in seen or current not in producers:
            continue
        seen.add(current)
        node, output_index = producers[current]
        if node.op_type == "MaxPool" and output_index == 1:
            return True
        stack.extend(node.input)
    return False


def _type_problem(elem_type: int) -> str | None:
    """``Severity.ERROR`` for types TensorRT 10 lacks, ``Severity.WARNING`` for DOUBLE (cast down), else None."""
    import onnx

    T = onnx.TensorProto
    if elem_type in (
        T.UNDEFINED,
        T.FLOAT,
        T.FLOAT16,
        T.BFLOAT16,
        T.INT32,
        T.INT64,
        T.INT8,
        T.UINT8,
        T.BOOL,
        T.FLOAT8E4M3FN,
        T.INT4,
    ):
        return None
    return Severity.WARNING if elem_type == T.DOUBLE else Severity.ERROR


def _check_types(proto: onnx.ModelProto) -> list[LintIssue]:
    """One issue per unsupported data type, naming a few tensors that have it."""
    import onnx

    graph = proto.graph
    try:  # inferred types reveal intermediate DOUBLE/STRING tensors too
        graph = onnx.shape_inference.infer_shapes(proto).graph
    except Exception:  # inference is best effort; declared types are still checked
        pass
    typed = [
        (v.name, v.type.tensor_type.elem_type)
        for v in (*graph.input, *graph.output, *graph.value_info)
        if v.type.HasField("tensor_type")
    ]
    typed += [(t.name, t.data_type) for t in graph.initializer]
    by_type: dict[int, list[str]] = {}
    for name, elem_type in typed:
        if _type_problem(elem_type):
            by_type.setdefault(elem_type, []).append(name)
    issues = []
    for elem_type, names in by_type.items():
        severity = _type_problem(elem_type)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        what = (
            "TensorRT casts DOUBLE down to FLOAT (clamped)"
            if severity == Severity.WARNING
            else "TensorRT does not support it"
        )
        issues.append(
            LintIssue(severity, shown, "-", f"{len(names)} tensor(s) of type {_type_name(elem_type)}: {what}")
        )
    return issues
