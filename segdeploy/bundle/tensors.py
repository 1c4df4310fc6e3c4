"""The inputs and outputs of an ONNX graph as the bundle's configs describe them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
