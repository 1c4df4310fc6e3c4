"""Converting an exported ONNX model to exactly the requested opset.

torch's exporter writes opset 18 and, asked for less, tries onnx's version
converter and silently keeps 18 when that fails. The converter lacks many
down adapters (``Pad``, ``Split``, ``Shape``, ``Div``, ...) even where a node
means the same in the older opset. So, going down:

1. nodes using a newer feature get their older spelling (``Shape(start, end)``
   -> ``Shape`` + ``Slice``; ``Split(num_outputs)`` -> ``Split`` with sizes;
   ``Reshape(allowzero=1)`` -> ``Reshape`` where no shape holds 0;
   ``Reduce*(noop_with_empty_axes=0)`` loses the attribute, which onnx's own
   adapter forgets);
2. nodes whose op changed in between but that fit the target opset's schema
   (no extra inputs; new attributes only at their defaults, then dropped)
   are carried over unchanged: they are
   moved to a private domain while onnx's converter handles the rest;
3. the result is checked to carry the target opset (the exporter then runs
   ``onnx.checker`` with ``full_check``, which validates every node against
   the target schemas).
"""

from __future__ import annotations

import onnx
import onnx.defs
import onnx.numpy_helper
import onnx.version_converter

from segdeploy.errors import ExportError

_SHIELD_DOMAIN = "segdeploy.shield"


def default_opset(model: onnx.ModelProto) -> int:
    """The version of the default ONNX domain the model imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    raise ExportError("the exported model imports no default ONNX opset")


def convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """Return ``model`` converted to default-domain opset ``target``.

    Args:
        model: an ONNX model with no subgraphs (what the exporter writes for these networks).
        target: the opset to write.

    Raises:
        ExportError: the conversion failed or left another opset.
    """
    current = default_opset(model)
    if current == target:
        return model
    shielded = False
    if target < current:
        _respell_for_older_opset(model, target)
        shielded = _shield_fitting_nodes(model, current, target)
    try:
        converted = onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # onnx raises RuntimeError/ValueError carrying C++ assertion text
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"cannot convert the model from opset {current} to {target}: {reason}") from None
    if shielded:
        _unshield(converted)
    if default_opset(converted) != target:
        raise ExportError(f"opset conversion to {target} left opset {default_opset(converted)}")
    return converted


def _respell_for_older_opset(model: onnx.ModelProto, target: int) -> None:
    shapes: dict[str, list[int | None]] | None = None
    for node in list(model.graph.node):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Shape" and target < 15:
            _shape_range_as_slice(model, node)
        elif node.op_type == "Reshape" and target < 14:
            _drop_allowzero(model, node)
        elif node.op_type == "Split" and target < 18:
            shapes = shapes if shapes is not None else _known_shapes(model)
            _split_sizes_as_input(model, node, shapes)
        elif node.op_type.startswith("Reduce") and node.op_type != "ReduceSum" and target < 18:
            # onnx's 18 -> 17 adapters move axes to an attribute but keep this opset-18-only one
            for attr in list(node.attribute):
                if attr.name == "noop_with_empty_axes" and attr.i == 0:
                    node.attribute.remove(attr)


def _shield_fitting_nodes(model: onnx.ModelProto, current: int, target: int) -> bool:
    """Move nodes that mean the same at ``target`` out of the converter's way; True if any moved."""
    moved = False
    for node in model.graph.node:
        if node.domain in ("", "ai.onnx") and _fits_unchanged(node, current, target):
            node.domain = _SHIELD_DOMAIN
            moved = True
    if moved:
        model.opset_import.append(onnx.helper.make_opsetid(_SHIELD_DOMAIN, 1))
    return moved


def _fits_unchanged(node: onnx.NodeProto, current: int, target: int) -> bool:
    try:
        new = onnx.defs.get_schema(node.op_type, current)
        old = onnx.defs.get_schema(node.op_type, target)
    except onnx.defs.SchemaError:
        return False
    if new.since_version == old.since_version:
        return False  # unchanged op: the converter passes it through itself
    if len(node.input) > old.max_input or len(node.output) > old.max_output:
        return False
    newer = [attr for attr in node.attribute if attr.name not in old.attributes]
    if not all(_is_default(attr, new) for attr in newer):
        return False
    for attr in newer:  # e.g. Reshape(allowzero=0): the older op behaves like the default
        node.attribute.remove(attr)
    return True


def _is_default(attr: onnx.AttributeProto, schema: onnx.defs.OpSchema) -> bool:
    declared = schema.attributes.get(attr.name)
    if declared is None or not declared.default_value.name:
        return False
    return onnx.helper.get_attribute_value(attr) == onnx.helper.get_attribute_value(declared.default_value)


def _unshield(model: onnx.ModelProto) -> None:
    for node in model.graph.node:
        if node.domain == _SHIELD_DOMAIN:
            node.domain = ""
    kept = [e for e in model.opset_import if e.domain != _SHIELD_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)


def _shape_range_as_slice(model: onnx.ModelProto, node: onnx.NodeProto) -> None:
    """Opset 15's ``Shape(start, end)`` -> ``Shape`` followed by ``Slice``."""
    attrs = {a.name: a for a in node.attribute if a.name in ("start", "end")}
    if not attrs:
        return
    start = attrs["start"].i if "start" in attrs else 0
    end = attrs["end"].i if "end" in attrs else 2**62
    for attr in attrs.values():
        node.attribute.remove(attr)
    base = node.name or node.output[0]
    full = f"{base}_full_shape"
    consts = {f"{base}_starts": start, f"{base}_ends": end, f"{base}_axes": 0}
    for name, value in consts.items():
        model.graph.initializer.append(onnx.helper.make_tensor(name, onnx.TensorProto.INT64, [1], [value]))
    sliced = onnx.helper.make_node("Slice", [full, *consts], [node.output[0]], name=f"{base}_slice")
    node.output[0] = full
    position = list(model.graph.node).index(node)
    model.graph.node.insert(position + 1, sliced)


def _drop_allowzero(model: onnx.ModelProto, node: onnx.NodeProto) -> None:
    """Opset 14's ``Reshape(allowzero=1)`` -> ``Reshape``: they differ only for a 0 in the shape.

    The exporter's shapes are constants or sizes of images and feature maps,
    never 0; a constant shape holding 0 is refused.
    """
    constants = {init.name: init for init in model.graph.initializer}
    shape = constants.get(node.input[1])
    if shape is not None and 0 in onnx.numpy_helper.to_array(shape).tolist():
        raise ExportError(f"cannot write Reshape node {node.name!r} with allowzero and a 0 in its shape below opset 14")
    for attr in list(node.attribute):
        if attr.name == "allowzero":
            node.attribute.remove(attr)


def _split_sizes_as_input(model: onnx.ModelProto, node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> None:
    """Opset 18's ``num_outputs`` attribute -> the ``split`` input (needs a static dimension)."""
    attrs = {a.name: a for a in node.attribute}
    if "num_outputs" not in attrs:
        return
    axis = attrs["axis"].i if "axis" in attrs else 0
    shape = shapes.get(node.input[0])
    size = shape[axis] if shape and -len(shape) <= axis < len(shape) else None
    if size is None:
        raise ExportError(f"cannot write Split node {node.name!r} on a dynamic axis below opset 18")
    parts = attrs["num_outputs"].i
    chunk = -(-size // parts)  # opset 18: equal chunks, the last one smaller
    sizes = [min(chunk, size - i * chunk) for i in range(parts)]
    name = f"{node.name or node.output[0]}_split_sizes"
    model.graph.initializer.append(onnx.helper.make_tensor(name, onnx.TensorProto.INT64, [parts], sizes))
    while len(node.input) < 2:
        node.input.append("")
    node.input[1] = name
    node.attribute.remove(attrs["num_outputs"])


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # shape inference helps here but is not required
        inferred = model
    shapes: dict[str, list[int | None]] = {}
    graph = inferred.graph
    for info in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes
