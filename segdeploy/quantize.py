"""INT8 ONNX with explicit QuantizeLinear/DequantizeLinear (Q/DQ) pairs, placed the way TensorRT fuses them.

TensorRT 11 has no implicit INT8 (no calibrators, no INT8 builder flag): an
INT8 engine comes from an ONNX whose Q/DQ nodes say where to quantize. This
module writes such a file from an FP32 export and calibration images.

The default backend is ONNX Runtime's ``quantize_static`` (QDQ format), with
settings TensorRT's parser and fusions need, which are not ORT's defaults
(see docs/int8.md for the measurements):

- only the inputs of Conv, ConvTranspose, MatMul and Gemm are quantized, not
  their outputs; everything else stays float. ORT's default op list also
  quantizes MaxPool, Slice, Where..., which puts Q/DQ on SegNet's unpooling
  slots and flipped 8-16% of its window choices;
- biases stay float: ORT's default stores them as INT32 DequantizeLinear
  inputs, which TensorRT's parser rejects;
- symmetric int8 activations and weights (zero points 0, as TensorRT requires),
  per-tensor activation scales, per-channel weight scales on the output-channel
  axis (0 for Conv, 1 for ConvTranspose);
- MatMul/Gemm inputs computed from the input's *shape* only (the
  adaptive-pooling rewrite's pooling matrices) stay float: their values change
  with the input size, so a scale calibrated at one size clips them at another;
- residual Adds: TensorRT fuses ``Conv -> Add`` when the Add's other (skip)
  input arrives through Q/DQ; that input gets the Q/DQ pair its tensor already
  has (or a new pair with a max-calibrated scale).

The optional ModelOpt backend (``nvidia-modelopt[onnx]``) places Q/DQ with
NVIDIA's own rules; it is never a base dependency. ModelOpt patches ONNX
Runtime's quantizer in the process it runs in (measured: ``quantize_static``
then fails on the next model), so use one backend per process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.errors import ExportError, MissingDependencyError, UserInputError, first_line

if TYPE_CHECKING:
    import onnx

QUANTIZERS = ("ort", "modelopt")
DEFAULT_CALIB_SIZE = 64

# torchvision's ImageNet statistics, what the zoo's backbone weights expect (pixels in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})

# Ops whose inputs carry the work TensorRT runs in INT8.
QUANTIZED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
_CONV_OPS = frozenset({"Conv", "ConvTranspose"})
_SHAPE_OPS = frozenset({"Shape", "Size"})
_INT8_MAX = 127.0
# The first opset whose QuantizeLinear/DequantizeLinear take FP16 scales (int8-fp16 needs them).
FP16_QDQ_OPSET = 19
_CALIB_BATCH = 8
_MODELOPT_EXTRA = "pip install 'segdeploy[modelopt]' (nvidia-modelopt[onnx])"


@dataclass
class QuantizationReport:
    """What ``quantize_int8`` did.

    Attributes:
        quantizer: ``"ort"`` or ``"modelopt"``.
        precision: ``"int8"`` (the rest FP32) or ``"int8-fp16"`` (the rest FP16).
        calibration_images: images the activation ranges were measured on.
        quantized_nodes: names of the Conv/ConvTranspose/MatMul/Gemm nodes whose inputs are quantized.
        float_nodes: names of such nodes left in float, with why (``name: reason``).
        residual_adds: names of the Adds whose skip input was given Q/DQ.
        seconds: wall time.
        notes: anything else worth knowing.
    """

    quantizer: str
    precision: str
    calibration_images: int
    quantized_nodes: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    residual_adds: list[str] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``"int8 (ort): 26 nodes quantized, 0 left in float, 4 residual Adds, 64 images"``."""
        return (
            f"{self.precision} ({self.quantizer}): {len(self.quantized_nodes)} nodes quantized, "
            f"{len(self.float_nodes)} left in float, {len(self.residual_adds)} residual Adds, "
            f"{self.calibration_images} calibration images"
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "summary": self.summary()}


# --------------------------------------------------------------------------- calibration data
def load_calibration(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    in_channels: int,
    calib_size: int = DEFAULT_CALIB_SIZE,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Calibration inputs from a directory of images or an ``.npy`` of preprocessed batches.

    Images (sorted by file name, the first ``calib_size``) are read with Pillow,
    resized to ``shape`` (bilinear), scaled to [0, 1] and normalised with
    ``(x - mean) / std`` per channel, or with ``normalize`` (which gets float32
    ``[C, H, W]`` in [0, 1] and returns the model's input for that image). An
    ``.npy`` must hold float32 ``[N, C, H, W]`` already preprocessed; it is
    loaded without pickles and its first ``calib_size`` images are used.

    Args:
        path: a directory of images or an ``.npy`` file.
        shape: ``(H, W)`` the images are resized to (the export's trace size).
        in_channels: channels the model takes; images must have exactly that many.
        calib_size: the most images to use (at least 1).
        mean, std: per-channel statistics (length 1 or ``in_channels``); default the
            ImageNet ones for 3 channels, their averages for 1 channel.
        normalize: replaces ``mean``/``std`` when given.

    Returns:
        float32 ``[n, C, H, W]``, ``1 <= n <= calib_size``.

    Raises:
        UserInputError: missing path, no images, an unreadable image, the wrong channel
            count, or an ``.npy`` of the wrong rank, channels or dtype.
        MissingDependencyError: a directory of images but no Pillow.
    """
    if calib_size < 1:
        raise UserInputError(f"calibration size must be at least 1 (got {calib_size})")
    if in_channels < 1:
        raise UserInputError(f"in_channels must be positive (got {in_channels})")
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise UserInputError(f"calibration image size must be (height, width), got {tuple(shape)}")
    source = Path(path)
    if not source.exists():
        raise UserInputError(f"calibration data {source} does not exist; pass a directory of images or an .npy file")
    if source.is_dir():
        return _load_image_dir(source, (int(shape[0]), int(shape[1])), in_channels, calib_size, mean, std, normalize)
    if source.suffix.lower() == ".npy":
        return _load_npy(source, in_channels, calib_size)
    raise UserInputError(f"calibration data {source} is neither a directory of images nor an .npy file")


def _load_npy(path: Path, in_channels: int, calib_size: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # truncated, not an .npy at all, or an object array (needs pickles: refused)
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise UserInputError(
                f"calibration file {path} holds Python objects; it is not loaded with pickles"
            ) from None
        raise UserInputError(f"calibration file {path} is not a readable .npy array: {first_line(exc)}") from None
    if not isinstance(array, np.ndarray):
        raise UserInputError(f"calibration file {path} holds no single array (an .npz?); save one float32 NCHW array")
    if array.dtype != np.float32:
        raise UserInputError(f"calibration file {path} is {array.dtype}; expected preprocessed float32 NCHW")
    if array.ndim != 4:
        raise UserInputError(f"calibration file {path} has shape {tuple(array.shape)}; expected rank 4 (N, C, H, W)")
    if array.shape[1] != in_channels:
        raise UserInputError(
            f"calibration file {path} has {array.shape[1]} channels (shape {tuple(array.shape)}); "
            f"the model takes {in_channels}"
        )
    if min(array.shape) < 1:
        raise UserInputError(f"calibration file {path} is empty (shape {tuple(array.shape)})")
    data = np.ascontiguousarray(array[:calib_size], dtype=np.float32)
    if not np.isfinite(data).all():
        raise UserInputError(f"calibration file {path} holds NaN or infinite values")
    return data


def _load_image_dir(
    directory: Path,
    size: tuple[int, int],
    in_channels: int,
    calib_size: int,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    normalize: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise UserInputError(f"cannot read calibration directory {directory}: {exc.strerror or exc}") from None
    if not files:
        raise UserInputError(
            f"calibration directory {directory} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError(
            "reading calibration images needs Pillow: pip install 'segdeploy[int8]', or pass an .npy of "
            "preprocessed float32 NCHW batches"
        ) from None
    if normalize is None:
        mean_arr, std_arr = _statistics(mean, std, in_channels)
    height, width = size
    images = []
    for file in files[:calib_size]:
        pixels = _read_image(Image, file, (width, height), in_channels)
        if normalize is None:
            image = (pixels - mean_arr) / std_arr
        else:
            image = np.asarray(normalize(pixels), dtype=np.float32)
            if image.shape != (in_channels, height, width):
                raise UserInputError(
                    f"the normalize function returned shape {image.shape} for {file.name}; "
                    f"expected {(in_channels, height, width)}"
                )
        images.append(image.astype(np.float32))
    return np.stack(images)


def _read_image(image_module: Any, file: Path, size: tuple[int, int], in_channels: int) -> np.ndarray:
    """One image as float32 ``[C, H, W]`` in [0, 1], resized to ``size`` (width, height)."""
    try:
        with image_module.open(file) as image:
            image.load()
            if image.mode == "P":  # a palette is a storage format for colour
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            mode = image.mode
            channels = len(image.getbands())
            if channels != in_channels:
                raise UserInputError(
                    f"calibration image {file} has {channels} channel(s) ({mode}); the model takes {in_channels}"
                )
            if mode in ("1", "L", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
                scale = 255.0
                bands = [image] if channels == 1 else list(image.split())
                if mode == "1":
                    bands = [image.convert("L")]
            elif mode.startswith("I;16"):
                scale = 65535.0
                bands = [image.convert("I")]
            else:
                raise UserInputError(f"calibration image {file} has pixel format {mode}; use 8- or 16-bit images")
            resized = [
                np.asarray(band.convert("F").resize(size, image_module.Resampling.BILINEAR), dtype=np.float32)
                for band in bands
            ]
    except UserInputError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on corrupt files
        raise UserInputError(f"cannot read calibration image {file}: {first_line(exc)}") from None
    return np.stack(resized) / scale


def _statistics(
    mean: float | Sequence[float] | None, std: float | Sequence[float] | None, in_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    if mean is None and std is None:
        if in_channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif in_channels == 1:
            mean, std = (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
        else:
            raise UserInputError(f"a {in_channels}-channel model needs explicit mean and std for its images")
    elif mean is None or std is None:
        raise UserInputError("give both mean and std, or neither")
    mean_arr = np.asarray(mean, np.float32).reshape(-1)
    std_arr = np.asarray(std, np.float32).reshape(-1)
    for name, values in (("mean", mean_arr), ("std", std_arr)):
        if values.size not in (1, in_channels):
            raise UserInputError(f"{name} has {values.size} values; the model takes {in_channels} channels")
    if not (std_arr > 0).all():
        raise UserInputError(f"std must be positive, got {std_arr.tolist()}")
    return mean_arr.reshape(-1, 1, 1), std_arr.reshape(-1, 1, 1)


# --------------------------------------------------------------------------- quantization
def quantize_int8(
    model: onnx.ModelProto | str | os.PathLike[str],
    calibration: np.ndarray,
    *,
    quantizer: str = "ort",
    fp16: bool = False,
    residual_adds: bool = True,
) -> tuple[onnx.ModelProto, QuantizationReport]:
    """Insert Q/DQ pairs into an FP32 ONNX model, calibrated on ``calibration``.

    Args:
        model: an FP32 ``ModelProto`` (left unchanged) or a path to one; input ``[N, C, H, W]``.
        calibration: float32 ``[n, C, H, W]`` preprocessed inputs (``load_calibration``).
        quantizer: ``"ort"`` (ONNX Runtime, default) or ``"modelopt"`` (NVIDIA ModelOpt, an optional extra).
        fp16: compute the non-quantized part in FP16 (``"int8-fp16"``), inputs and outputs
            staying float32; needs opset >= 19, where Q/DQ scales may be FP16.
        residual_adds: give the skip input of ``Conv -> Add`` residual joins a Q/DQ pair
            (TensorRT's placement guide), ORT backend only.

    Returns:
        ``(quantized_model, report)``; the model keeps the input's dynamic axes and metadata,
        with ``precision`` set to ``int8`` or ``int8-fp16`` and ``quantizer`` added.

    Raises:
        UserInputError: unknown quantizer, bad calibration array, a model that is not FP32,
            or ``fp16`` below opset 19.
        MissingDependencyError: ``quantizer="modelopt"`` without ModelOpt installed.
        ExportError: the quantizer failed or wrote an invalid model.
    """
    from segdeploy.export.lint import load_onnx

    if quantizer not in QUANTIZERS:
        raise UserInputError(f"unknown quantizer {quantizer!r}: choose {' or '.join(QUANTIZERS)}")
    if quantizer == "modelopt":
        _require_modelopt()
    proto = load_onnx(model)
    _check_quantizable(proto, fp16)
    calibration = _check_calibration(proto, calibration)
    started = time.perf_counter()
    precision = "int8-fp16" if fp16 else "int8"
    report = QuantizationReport(quantizer=quantizer, precision=precision, calibration_images=int(calibration.shape[0]))
    if quantizer == "ort":
        quantized = _quantize_ort(proto, calibration, report, residual_adds)
    else:
        quantized = _quantize_modelopt(proto, calibration, report, fp16)
    if fp16 and quantizer == "ort":
        quantized = _to_fp16(quantized, report)
    _finish(quantized, proto, report)
    report.seconds = time.perf_counter() - started
    return quantized, report


def _opset(proto: onnx.ModelProto) -> int:
    return next((imp.version for imp in proto.opset_import if imp.domain in ("", "ai.onnx")), 0)


def _check_quantizable(proto: onnx.ModelProto, fp16: bool) -> None:
    import onnx

    ops = {node.op_type for node in proto.graph.node}
    if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}:
        raise UserInputError("the model is already quantized: quantize the FP32 export instead")
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer):
        raise UserInputError("the model holds FP16 weights: quantize the FP32 export (int8-fp16 converts afterwards)")
    inputs = [v for v in proto.graph.input if v.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise UserInputError("quantize_int8 needs a model with one float32 input [N, C, H, W]")
    if fp16 and _opset(proto) < FP16_QDQ_OPSET:
        raise UserInputError(
            f"int8-fp16 needs opset {FP16_QDQ_OPSET} or later (FP16 Q/DQ scales); this model is opset "
            f"{_opset(proto)}: export it with --opset {FP16_QDQ_OPSET}"
        )


def _check_calibration(proto: onnx.ModelProto, calibration: Any) -> np.ndarray:
    if calibration is None:
        raise UserInputError("INT8 quantization needs calibration data: pass images or an .npy (--calib PATH)")
    data = np.asarray(calibration)
    if data.dtype != np.float32 or data.ndim != 4 or data.shape[0] < 1 or min(data.shape) < 1:
        raise UserInputError(
            f"calibration data must be float32 [N, C, H, W] with N >= 1; got {data.dtype} {tuple(data.shape)}"
        )
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value != data.shape[1]:
        raise UserInputError(
            f"calibration data has {data.shape[1]} channels; the model takes {dims[1].dim_value}"
        )
    if not np.isfinite(data).all():
        raise UserInputError("calibration data holds NaN or infinite values")
    return np.ascontiguousarray(data)


def _input_name(proto: onnx.ModelProto) -> str:
    initializers = {t.name for t in proto.graph.initializer}
    return next(v.name for v in proto.graph.input if v.name not in initializers)


def _batches(calibration: np.ndarray) -> list[np.ndarray]:
    return [calibration[i : i + _CALIB_BATCH] for i in range(0, calibration.shape[0], _CALIB_BATCH)]


def _quantize_ort(
    proto: onnx.ModelProto, calibration: np.ndarray, report: QuantizationReport, residual_adds: bool
) -> onnx.ModelProto:
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    input_name = _input_name(proto)
    work = onnx.ModelProto()
    work.CopyFrom(proto)
    _name_unnamed_nodes(work.graph)
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


def _name_unnamed_nodes(graph: onnx.GraphProto) -> None:
    seen: set[str] = set()
    for index, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}_int8pass"
        seen.add(node.name)


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
    _topological_sort(graph)
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
    graph.initializer.extend([
        numpy_helper.from_array(np.array(scale, np.float32), f"{base}_scale"),
        numpy_helper.from_array(np.array(0, np.int8), f"{base}_zero_point"),
    ])
    graph.node.extend([
        onnx.helper.make_node("QuantizeLinear", [name, f"{base}_scale", f"{base}_zero_point"], [f"{base}_q"],
                              name=f"{base}_QuantizeLinear"),
        onnx.helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale", f"{base}_zero_point"],
                              [f"{base}_dq"], name=f"{base}_DequantizeLinear"),
    ])
    return f"{base}_dq"


def _topological_sort(graph: onnx.GraphProto) -> None:
    available = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        still = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                still.append(node)
        if len(still) == len(pending):
            raise ExportError(f"quantization left undefined inputs: {sorted({n for x in still for n in x.input})[:3]}")
        pending = still
    del graph.node[:]
    graph.node.extend(ordered)


def _session(model: onnx.ModelProto, *, optimize: bool = True) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _to_fp16(model: onnx.ModelProto, report: QuantizationReport) -> onnx.ModelProto:
    """The non-quantized part in FP16; Q/DQ scales become FP16 too, so DequantizeLinear outputs FP16."""
    import onnx

    from segdeploy.precision import convert_to_fp16

    converted, kept = convert_to_fp16(model)
    # The conversion keeps nodes that read only initializers in FP32 (it cannot tell weight
    # dequantization from shape arithmetic) and casts their output: make those scales FP16 instead,
    # so each Conv reads its weights straight from a DequantizeLinear, as TensorRT fuses them.
    kept = set(kept) - _fp16_weight_dequantize(converted.graph)
    if kept:
        report.notes.append(f"FP32 kept by the FP16 conversion: {', '.join(sorted(kept))}")
    try:
        onnx.checker.check_model(converted, full_check=True)
    except Exception as exc:
        raise ExportError(f"the int8-fp16 model is invalid: {first_line(exc)}") from None
    return converted


def _fp16_weight_dequantize(graph: onnx.GraphProto) -> set[str]:
    """``DQ(int8 W, fp32 scale) -> Cast(FLOAT16)`` becomes ``DQ(int8 W, fp16 scale)``; returns the DQ names."""
    import onnx
    from onnx import numpy_helper

    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {v.name for v in graph.output}
    replacement: dict[str, str] = {}
    changed, dropped = set(), set()
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers or node.output[0] in graph_outputs:
            continue
        scale = initializers.get(node.input[1])
        users = consumers.get(node.output[0], [])
        if scale is None or scale.data_type != onnx.TensorProto.FLOAT or len(consumers.get(scale.name, [])) != 1:
            continue
        if not users or not all(
            user.op_type == "Cast" and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in user.attribute)
            for user in users
        ):
            continue
        scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale).astype(np.float16), scale.name))
        for user in users:
            replacement[user.output[0]] = node.output[0]
            dropped.add(id(user))
        changed.add(node.name)
    kept_nodes = [node for node in graph.node if id(node) not in dropped]
    for node in kept_nodes:
        node.input[:] = [replacement.get(name, name) for name in node.input]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del graph.value_info[:]
    return changed


def _finish(quantized: onnx.ModelProto, original: onnx.ModelProto, report: QuantizationReport) -> None:
    """Metadata, then the checks every quantized file must pass."""
    import onnx

    metadata = {prop.key: prop.value for prop in original.metadata_props}
    metadata.update(precision=report.precision, quantizer=report.quantizer)
    if "opset" in metadata:  # ModelOpt may raise the opset
        metadata["opset"] = str(_opset(quantized))
    del quantized.metadata_props[:]
    for key, value in metadata.items():
        entry = quantized.metadata_props.add()
        entry.key, entry.value = key, value
    quantized.ir_version = min(quantized.ir_version, original.ir_version) or original.ir_version
    del quantized.graph.value_info[:]
    try:
        onnx.checker.check_model(quantized, full_check=True)
    except Exception as exc:
        raise ExportError(f"the quantized model is invalid: {first_line(exc)}") from None


# --------------------------------------------------------------------------- ModelOpt
def modelopt_available() -> bool:
    """True when ``modelopt.onnx.quantization`` imports."""
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except Exception:  # ImportError, or a broken install raising anything on import
        return False
    return True


def _require_modelopt() -> None:
    if not modelopt_available():
        raise MissingDependencyError(f"--quantizer modelopt needs NVIDIA ModelOpt: {_MODELOPT_EXTRA}")


def _quantize_modelopt(
    proto: onnx.ModelProto, calibration: np.ndarray, report: QuantizationReport, fp16: bool
) -> onnx.ModelProto:
    import onnx
    from modelopt.onnx.quantization import quantize

    with tempfile.TemporaryDirectory(prefix="segdeploy-modelopt-") as tmp:
        source, target = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, source)
        try:
            quantize(
                onnx_path=str(source),
                quantize_mode="int8",
                calibration_data={_input_name(proto): calibration},
                calibration_method="max",
                calibration_eps=["cpu"],
                output_path=str(target),
                high_precision_dtype="fp16" if fp16 else "fp32",
                # ModelOpt quantizes MaxPool inputs, and with them the unpooling rewrite's slots.
                nodes_to_exclude=_unpool_pools(proto.graph) or None,
                log_level="ERROR",
            )
            quantized = onnx.load(str(target))
        except Exception as exc:  # ModelOpt raises many types
            raise ExportError(f"ModelOpt quantization failed: {first_line(exc)}") from None
    conv_like = [node.name for node in quantized.graph.node if node.op_type in QUANTIZED_OPS]
    fed = _fed_by_dequantize(quantized.graph)
    report.quantized_nodes.extend(name for name in conv_like if name in fed)
    report.float_nodes.extend(f"{name}: left in float by ModelOpt" for name in conv_like if name not in fed)
    return quantized


def _unpool_pools(graph: onnx.GraphProto) -> list[str]:
    """MaxPool nodes whose input also feeds an unpooling comparison (Equal), through slices and maxima."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def reaches_equal(name: str) -> bool:
        seen, stack = set(), [name]
        while stack:
            current = stack.pop()
            for user in consumers.get(current, []):
                if user.op_type == "Equal":
                    return True
                if user.op_type in ("Slice", "Max") and user.output[0] not in seen:
                    seen.add(user.output[0])
                    stack.append(user.output[0])
        return False

    pools = [node for node in graph.node if node.op_type == "MaxPool" and node.name]
    return [node.name for node in pools if reaches_equal(node.input[0])]


def _fed_by_dequantize(graph: onnx.GraphProto) -> set[str]:
    producer = {out: node for node in graph.node for out in node.output}
    return {
        node.name
        for node in graph.node
        if node.input and (source := producer.get(node.input[0])) is not None and source.op_type == "DequantizeLinear"
    }
