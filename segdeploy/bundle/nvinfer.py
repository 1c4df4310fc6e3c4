"""What DeepStream's Gst-nvinfer does with a segmentation model, and the ONNX made for it.

nvinfer scales a frame to ``infer-dims``, converts it to ``model-color-format`` (0 RGB, 1 BGR, 2 grey) and
feeds ``net-scale-factor * (pixel - offsets[c])`` as float32 NCHW: one scale for all channels, no uint8
input. Its built-in segmentation parser reads the first output as per-class float scores and gives a
pixel the first class whose score is the largest and above ``segmentation-threshold``, else -1; it
applies no softmax.

So :func:`deepstream_model` derives from the exported graph an ONNX that nvinfer runs exactly:

- input ``input``: float32 NCHW 0..255 pixels in the model's color order (``net-scale-factor=1``,
  ``offsets=0``); the model's own normalization follows inside the graph: ``(x / 255 - mean) / std``
  for a float32 model, the graph's fused normalization for a uint8 one (its Cast then takes floats);
- output ``scores``: float per class, whose first maximum is the model's class map: Softmax after
  logits, probabilities as they are, one-hot floats from a class map; a one-channel model (class map
  0/1) gets two channels, one-hot of its class map.

:func:`simulate` runs nvinfer's conversion, normalization and parser on frames, so ``--check`` can prove
that a config gives the model's own class map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from segdeploy.artifact import INPUT_NAME, OUTPUT_NAMES, Metadata, OutputKind
from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    import onnx

SCORES = "scores"
"""The output of the DeepStream ONNX: per-class float scores."""
NEAR_TIE = 1e-5
"""Softmax may round two logits this close (relative) to one score, so nvinfer may pick either class."""


def score_channels(num_classes: int) -> int:
    """The DeepStream ONNX's class channels: the classes, or two (not the class, the class) for one class."""
    return max(int(num_classes), 2)


def threshold(num_classes: int) -> float:
    """A ``segmentation-threshold`` below every pixel's top score (>= 1/C for probabilities, 1 for one-hot)."""
    return 0.5 / score_channels(num_classes)


def deepstream_model(model: onnx.ModelProto, metadata: Metadata) -> onnx.ModelProto:
    """The ONNX nvinfer runs exactly (see the module docstring), checked by onnx.checker.

    Raises:
        UserInputError: a graph whose uint8 input feeds anything but Cast nodes (segdeploy writes Casts).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    ds = onnx.ModelProto()
    ds.CopyFrom(model)
    graph = ds.graph
    pre, kind = metadata.preprocessing, metadata.output
    raw = "segdeploy_ds_model_input"
    original = next(v for v in graph.input if v.name == INPUT_NAME)
    layout = pre.input_format.layout
    dims = list(original.type.tensor_type.shape.dim)
    nchw = [dims[0], dims[3], dims[1], dims[2]] if layout == "NHWC" else dims
    for node in graph.node:
        node.input[:] = [raw if name == INPUT_NAME else name for name in node.input]
    if pre.fused and any(n.op_type != "Cast" for n in graph.node if raw in n.input):
        raise UserInputError("the model's uint8 input feeds nodes other than Cast: export it with `segdeploy export`")

    def const(name: str, values: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(values, f"segdeploy_ds_{name}"))
        return f"segdeploy_ds_{name}"

    channels = len(pre.mean)
    head: list[onnx.NodeProto] = []
    if pre.fused:  # the graph's Cast nodes now cast floats; its own normalization follows them
        if layout == "NHWC":
            head.append(helper.make_node("Transpose", [INPUT_NAME], [raw], perm=[0, 2, 3, 1]))
        else:
            head.append(helper.make_node("Identity", [INPUT_NAME], [raw]))
    else:  # (x / 255 - mean) / std, the operations and constants the frame pipeline uses
        shape = (1, channels, 1, 1)
        mean = np.asarray(pre.input_order(pre.mean), np.float32).reshape(shape)
        std = np.asarray(pre.input_order(pre.std), np.float32).reshape(shape)
        head += [
            helper.make_node("Div", [INPUT_NAME, const("255", np.array(255, np.float32))], ["segdeploy_ds_unit"]),
            helper.make_node("Sub", ["segdeploy_ds_unit", const("mean", mean)], ["segdeploy_ds_centered"]),
            helper.make_node("Div", ["segdeploy_ds_centered", const("std", std)], [raw]),
        ]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(head + body)
    new_input = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, None)
    new_input.type.tensor_type.shape.dim.extend(nchw)
    graph.input.remove(original)
    graph.input.insert(0, new_input)

    main = OUTPUT_NAMES[kind]
    c = score_channels(int(metadata.num_classes or 1))
    tail: list[onnx.NodeProto] = []
    if kind is OutputKind.CLASSMAP or metadata.num_classes == 1:
        if kind is OutputKind.CLASSMAP:
            tail.append(helper.make_node("Unsqueeze", [main, const("axis1", np.array([1], np.int64))], ["ds_map"]))
            classes = const("classes", np.arange(c, dtype=np.int32).reshape(1, c, 1, 1))
        else:  # one channel of scores: class 1 where it exceeds the pipeline's threshold (0 logits, 0.5 probs)
            cut = 0.5 if kind is OutputKind.PROBS else 0.0
            tail += [
                helper.make_node("Greater", [main, const("cut", np.array(cut, np.float32))], ["ds_above"]),
                helper.make_node("Cast", ["ds_above"], ["ds_map"], to=TensorProto.INT32),
            ]
            classes = const("classes", np.arange(2, dtype=np.int32).reshape(1, 2, 1, 1))
        tail += [
            helper.make_node("Equal", ["ds_map", classes], ["ds_onehot"]),
            helper.make_node("Cast", ["ds_onehot"], [SCORES], to=TensorProto.FLOAT),
        ]
    elif kind is OutputKind.LOGITS:
        tail.append(helper.make_node("Softmax", [main], [SCORES], axis=1))
    else:
        tail.append(helper.make_node("Identity", [main], [SCORES]))
    graph.node.extend(tail)
    out_dims = list(next(o for o in graph.output if o.name == main).type.tensor_type.shape.dim)
    if kind is OutputKind.CLASSMAP:
        out_dims.insert(1, onnx.TensorShapeProto.Dimension(dim_value=c))
    else:
        out_dims[1].Clear()
        out_dims[1].dim_value = c
    scores = helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, None)
    scores.type.tensor_type.shape.dim.extend(out_dims)
    del graph.output[:]
    graph.output.append(scores)
    del graph.value_info[:]  # shapes of the old input's consumers changed type; inference redoes them
    del ds.metadata_props[:]
    # What `segdeploy build` reads to choose a profile (sizes, channels, precision), true of this graph too; not
    # the keys that would make it pass for a segdeploy export (its input is not the exported file's).
    kept = ("trace_shape", "in_channels", "min_size", "size_multiple", "max_size", "precision")
    props = {k: v for k, v in metadata.to_props().items() if k in kept and v}
    props["segdeploy_deepstream"] = (
        "Gst-nvinfer input: float32 NCHW 0..255 pixels in the model's color order "
        "(net-scale-factor=1, offsets=0); output 'scores': per-class float scores"
    )
    helper.set_model_props(ds, props)
    ds.doc_string = "DeepStream (Gst-nvinfer) form of a segdeploy model, derived by segdeploy bundle"
    onnx.checker.check_model(ds, full_check=True)
    return ds


def simulate(
    frames: np.ndarray,
    *,
    color_format: int,
    scale: float,
    offsets: list[float],
    run: object,
    cut: float,
) -> tuple[np.ndarray, np.ndarray]:
    """nvinfer on frames already at the network's size.

    Returns:
        ``(class map, scores)``: the N x H x W class map (-1 where no score passes) and the scores it came from.

    Args:
        frames: N x H x W x C uint8, RGB (C = 3) or grey (C = 1).
        color_format: ``model-color-format`` (0 RGB, 1 BGR, 2 grey).
        scale, offsets: ``net-scale-factor`` and ``offsets``.
        run: called with the float32 NCHW input, returns the first output (N x C x H x W scores).
        cut: ``segmentation-threshold``.
    """
    pixels = frames.astype(np.float32)
    if color_format == 1:
        pixels = pixels[..., ::-1]
    offset = np.zeros(pixels.shape[-1], np.float32)
    offset[: len(offsets)] = np.asarray(offsets[: pixels.shape[-1]], np.float32)
    x = np.float32(scale) * (pixels - offset)
    scores = np.asarray(run(np.ascontiguousarray(x.transpose(0, 3, 1, 2))), dtype=np.float32)  # type: ignore[operator]
    return parse_scores(scores, cut), scores


def expected_scores(output: np.ndarray, kind: OutputKind, num_classes: int, derived: bool) -> np.ndarray:
    """The scores nvinfer should read, made from the model's own output for the same frames.

    Args:
        output: the exported model's output (logits, probabilities or a class map).
        kind: its kind; ``num_classes``: the model's classes.
        derived: the scores come from the DeepStream ONNX (else nvinfer runs the model itself).
    """
    if not derived:
        return output.astype(np.float32)
    if kind is OutputKind.CLASSMAP or num_classes == 1:
        if kind is OutputKind.CLASSMAP:
            classes = output.astype(np.int64)
        else:
            classes = (output[:, 0] > (0.5 if kind is OutputKind.PROBS else 0.0)).astype(np.int64)
        depth = score_channels(num_classes)
        return (classes[:, None] == np.arange(depth).reshape(1, -1, 1, 1)).astype(np.float32)
    if kind is OutputKind.LOGITS:
        z = output.astype(np.float64)
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    return output.astype(np.float32)


def parse_scores(scores: np.ndarray, cut: float) -> np.ndarray:
    """nvinfer's segmentation parser on N x C x H x W scores: first class with the largest score above ``cut``."""
    passing = scores > np.float32(cut)
    masked = np.where(passing, scores, -np.inf)
    classes = masked.argmax(axis=1).astype(np.int32)
    classes[~passing.any(axis=1)] = -1
    return classes


def near_ties(scores: np.ndarray) -> np.ndarray:
    """N x H x W: pixels whose two largest scores lie within ``NEAR_TIE`` of each other (relative)."""
    if scores.shape[1] < 2:
        return np.zeros(scores.shape[:1] + scores.shape[2:], bool)
    top = np.sort(scores.astype(np.float64), axis=1)
    return top[:, -1] - top[:, -2] <= NEAR_TIE * np.maximum(1.0, np.abs(top[:, -1]))
