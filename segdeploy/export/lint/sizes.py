"""Spatial sizes baked from the trace into a dynamic file: constant shape inputs that carry the traced H or W.

In a file whose height and width are dynamic, every size that depends on them is computed from a
``Shape`` op. A constant shape input (Reshape, Expand, Tile, Slice, Resize, ConstantOfShape) holding the
traced height or width, or a value derived from them (``height/16``, ``(height/16)*(width/16)+1``,
``2*(height/16)-1``), is a size the capture took from the trace: the file then runs at the traced size
and fails or is wrong at others. A channel count can equal such a value, so a finding is a warning that
directs the proof (runs at other sizes decide), never a refusal by itself. Values that are a static
dimension of the node's data input (a reshape keeping 64 channels) are not reported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segdeploy.export.lint.report import LintIssue

if TYPE_CHECKING:
    import onnx

# op -> indices of its inputs that are shapes, sizes or slice bounds
SHAPE_INPUTS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (2,),  # the ends: starts are offsets (FCN's crops start at 5, 9, 31 at every size)
    "Resize": (3,),
    "ConstantOfShape": (0,),
}
_DIVISORS = (1, 2, 4, 8, 16, 32, 64)
_SMALLEST = 4  # 1, 2, 3 are everywhere (axes, heads, RGB): reporting them would say nothing


def derived_sizes(height: int, width: int) -> dict[int, str]:
    """Values a capture derives from a traced height and width, each with how it was derived."""
    found: dict[int, str] = {}

    def add(value: int, text: str) -> None:
        if value >= _SMALLEST and value not in found:
            found[value] = text

    for d in _DIVISORS:
        suffix = "" if d == 1 else f"/{d}"
        sides = {"height": (height // d, -(-height // d)), "width": (width // d, -(-width // d))}
        for name, values in sides.items():
            for v in values:
                add(v, f"{name}{suffix}")
                add(2 * v - 1, f"2*{name}{suffix}-1")
        for h in set(sides["height"]):
            for w in set(sides["width"]):
                area = f"({'height' + suffix})*({'width' + suffix})" if d > 1 else "height*width"
                add(h * w, area)
                add(h * w + 1, f"{area}+1")
    return found


def baked_sizes(proto: onnx.ModelProto, trace_hw: tuple[int, int]) -> list[LintIssue]:
    """Warnings for constant shape inputs of a dynamic-size ``proto`` that carry sizes of the trace ``trace_hw``.

    Args:
        proto: the model; nothing is reported unless its input's height and width are symbolic.
        trace_hw: the traced (height, width).
    """
    import onnx.numpy_helper
    import onnx.shape_inference

    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else []
    if len(dims) != 4 or sum(1 for d in dims if d.dim_param) < 2:
        return []
    constants = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=False)
    except Exception:  # shapes only sharpen the check
        inferred = proto
    static = {
        v.name: {d.dim_value for d in v.type.tensor_type.shape.dim if d.HasField("dim_value")}
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    sizes = derived_sizes(*trace_hw)
    issues = []
    for node in proto.graph.node:
        for index in SHAPE_INPUTS.get(node.op_type, ()):
            if index >= len(node.input) or node.input[index] not in constants:
                continue
            values = onnx.numpy_helper.to_array(constants[node.input[index]]).ravel().tolist()
            kept = static.get(node.input[0], set()) if node.op_type != "ConstantOfShape" else set()
            hits = sorted({f"{int(v)} = {sizes[int(v)]}" for v in values if int(v) in sizes and int(v) not in kept})
            if hits:
                issues.append(
                    LintIssue(
                        "warning",
                        node.name or node.output[0],
                        node.op_type,
                        f"constant {('shape', 'end')[node.op_type == 'Slice']} {values} holds "
                        f"{', '.join(hits)} of the traced {trace_hw[0]}x{trace_hw[1]}: a size baked from the trace "
                        "runs only there (other sizes must prove it)",
                        rule="baked-size",
                    )
                )
    return issues
