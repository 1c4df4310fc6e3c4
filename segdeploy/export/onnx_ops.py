"""ONNX translations of segdeploy's own torch ops, for torch's exporter.

A rewrite that inserts one custom op (instead of splicing its ATen ops) is
cheap to capture and to decompose; the exporter then calls the function here,
which writes the op's ONNX nodes directly. Each function computes what the op's
PyTorch implementation in ``segdeploy.export.replacements`` computes, with the ops
TensorRT's ONNX parser accepts; verification checks the two agree on every file.
"""

from __future__ import annotations

from typing import Any

from onnxscript import opset18 as op

from segdeploy.export.replacements import BoolOps, first_max_slots, unpool_op

ONNX_OPS = BoolOps(op.IsNaN, op.Equal, op.And, op.Or, op.Not)


def unpool_first_max(pool_input: Any, values: Any, kernel: int, out_h: Any, out_w: Any) -> Any:
    """``segdeploy::unpool_first_max``: Slice, Max, IsNaN/Equal/And/Or/Not, Where, DepthToSpace, Pad.

    ``out_h`` and ``out_w`` are Python ints in a static export, int64 scalars in a dynamic one.
    """
    k = int(kernel)
    pooled = op.Shape(values, start=2, end=4)  # [h, w] of the pooled values
    ends = op.Mul(pooled, op.Constant(value_ints=[k]))  # odd sizes: the last row/column has no window
    axes, steps = op.Constant(value_ints=[2, 3]), op.Constant(value_ints=[k, k])
    slots = [
        op.Slice(pool_input, op.Constant(value_ints=[a, b]), ends, axes, steps) for a in range(k) for b in range(k)
    ]
    window_max = slots[0]
    for slot in slots[1:]:  # from the slots, not a MaxPool: see replacements.unpool_first_max
        window_max = op.Max(window_max, slot)
    chosen = first_max_slots(slots, window_max, ONNX_OPS)
    slot_axis = op.Constant(value_ints=[2])
    masks = op.Concat(*(op.Unsqueeze(mask, slot_axis) for mask in chosen), axis=2)  # [N, C, k*k, h, w]
    zero = op.CastLike(op.Constant(value_float=0.0), values)
    placed = op.Where(masks, op.Unsqueeze(values, slot_axis), zero)
    channels = op.Concat(op.Shape(values, end=1), op.Constant(value_ints=[-1]), pooled, axis=0)
    windows = op.DepthToSpace(op.Reshape(placed, channels), blocksize=k, mode="CRD")  # [N, C, h*k, w*k]
    size = op.Concat(_one_d(out_h), _one_d(out_w), axis=0)
    pads = op.Concat(op.Constant(value_ints=[0] * 6), op.Sub(size, ends), axis=0)
    return op.Pad(windows, pads)


def _one_d(size: Any) -> Any:
    """A size argument as a 1-element int64 tensor."""
    if isinstance(size, int):
        return op.Constant(value_ints=[size])
    return op.Reshape(size, op.Constant(value_ints=[1]))


TRANSLATIONS: dict[Any, Any] = {unpool_op._opoverload: unpool_first_max}
"""torch op -> ONNX translation, for ``torch.onnx.export(custom_translation_table=...)`` or a registry."""
