"""The inputs and outputs of an ONNX graph as the bundle's configs describe them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy.artifact import INPUT_NAME, OUTPUT_NAMES, Metadata, dynamic_axes, file_input_shape
from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output: name, NumPy element type name and dims (an int, or the axis name when dynamic)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    @property
    def rank(self) -> int:
        return len(self.dims)


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """The graph's inputs (initializers excluded) and outputs.

    A dimension without a fixed size is its ``dim_param`` name, or ``"?"`` when it has none.
    """
    import onnx.helper

    def info(value: Any) -> TensorInfo:
        tensor_type = value.type.tensor_type
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        except (KeyError, TypeError, ValueError):
            dtype = f"onnx-type-{tensor_type.elem_type}"
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
            for d in tensor_type.shape.dim
        )
        return TensorInfo(value.name, dtype, dims)

    initializers = {t.name for t in model.graph.initializer}
    inputs = [info(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [info(v) for v in model.graph.output]


def check_graph(path: Path, metadata: Metadata, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """The graph must be what its metadata says: the input and output a consumer will be told about."""
    pre = metadata.preprocessing
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = ", ".join(t.name for t in inputs)
        raise UserInputError(f"{path} has inputs ({names}); a segdeploy file has one input named {INPUT_NAME!r}")
    tensor = inputs[0]
    expected_shape = file_input_shape(metadata.trace_shape, pre.input_format)  # type: ignore[arg-type]
    free = set(dynamic_axes(pre.input_format).values()) & set(metadata.dynamic_axes)
    axis_names = {i: n for i, n in dynamic_axes(pre.input_format).items() if n in free}
    if tensor.dtype != pre.input_format.dtype or tensor.rank != 4:
        raise UserInputError(
            f"{path}: input {tensor.name!r} is {tensor.dtype} of rank {tensor.rank}, but its metadata "
            f"says {pre.input_format.value}"
        )
    for axis, (dim, traced) in enumerate(zip(tensor.dims, expected_shape)):
        if isinstance(dim, int) and (axis in axis_names or dim != traced):
            raise UserInputError(
                f"{path}: input dims {list(tensor.dims)} disagree with its metadata (traced shape "
                f"{list(expected_shape)}, dynamic {', '.join(metadata.dynamic_axes) or 'none'})"
            )
        if not isinstance(dim, int) and axis not in axis_names:
            raise UserInputError(f"{path}: input axis {axis} is dynamic but its metadata fixes it")
    wanted = OUTPUT_NAMES[metadata.output]
    main = next((t for t in outputs if t.name == wanted), None)
    if main is None or outputs[0].name != wanted:
        raise UserInputError(
            f"{path}: its first output should be {wanted!r} (output {metadata.output.value}), the "
            f"graph has {', '.join(t.name for t in outputs)}"
        )
    if main.dtype != metadata.output.dtype or main.rank != len(metadata.output.layout):
        raise UserInputError(
            f"{path}: output {wanted!r} is {main.dtype} of rank {main.rank}, expected "
            f"{metadata.output.dtype} {metadata.output.layout}"
        )
    if metadata.output.layout == "NCHW" and main.dims[1] != metadata.num_classes:
        raise UserInputError(
            f"{path}: output {wanted!r} has {main.dims[1]} channels, its metadata says {metadata.num_classes} classes"
        )
    if not metadata.num_classes or metadata.num_classes < 1:
        raise UserInputError(f"{path}: bad num_classes {metadata.num_classes} in its metadata")
