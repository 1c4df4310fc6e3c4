"""What a segdeploy file is: tensor names, opsets, precisions, engines, I/O formats and the ONNX metadata.

This is a leaf module (it imports only ``errors``, ``shapes`` and the version), so every stage that
reads or writes a segdeploy file (export, verify, runtime, build, bench, bundle) shares one
description of it without importing each other. ``onnx`` is imported only when a file is loaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from segdeploy._version import __version__
from segdeploy.errors import UserInputError
from segdeploy.shapes import Shape, format_shape, parse_shape, size_problem

if TYPE_CHECKING:
    import onnx


class Choice(str, Enum):
    """A fixed option: equal to its value, and printed as it (``f"{Precision.FP16}"`` is ``fp16``)."""

    def __str__(self) -> str:
        return self.value


class Precision(Choice):
    """How the ONNX computes: FP32, FP16 (float32 I/O), INT8 Q/DQ with FP32 or FP16 elsewhere."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT8_FP16 = "int8-fp16"


class Runtime(Choice):
    """The runtimes segdeploy runs and compares."""

    TORCH = "torch"
    ORT = "ort"
    TRT = "trt"


class InputFormat(Choice):
    """The image input a file takes: float32 NCHW (normalized by the caller) or raw uint8 frames."""

    FLOAT32_NCHW = "float32-nchw"
    UINT8_NHWC = "uint8-nhwc"
    UINT8_NCHW = "uint8-nchw"

    @property
    def layout(self) -> str:
        return "NHWC" if self is InputFormat.UINT8_NHWC else "NCHW"

    @property
    def dtype(self) -> str:
        return "float32" if self is InputFormat.FLOAT32_NCHW else "uint8"


class OutputKind(Choice):
    """What the file outputs: float32 logits, float32 probabilities, or an int32 class map."""

    LOGITS = "logits"
    PROBS = "probs"
    CLASSMAP = "classmap"

    @property
    def dtype(self) -> str:
        """Element type of the output tensor: int32 for a class map, float32 otherwise (also for FP16 files)."""
        return "int32" if self is OutputKind.CLASSMAP else "float32"

    @property
    def layout(self) -> str:
        """``NHW`` for a class map (no class axis), ``NCHW`` for scores."""
        return "NHW" if self is OutputKind.CLASSMAP else "NCHW"


class ColorOrder(Choice):
    RGB = "rgb"
    BGR = "bgr"


INPUT_NAME = "input"
"""Name of the image input of every segdeploy ONNX file and engine."""

OUTPUT_NAMES = {kind: kind.value for kind in OutputKind}
"""Output tensor name per output kind: ``logits``, ``probs`` or ``classmap``."""

SUPPORTED_OPSETS = range(13, 21)
"""Opsets segdeploy writes and checks (TensorRT 10 parses 9 to 20)."""
DEFAULT_OPSET = 17

ONNX_SUFFIX = ".onnx"
ENGINE_SUFFIXES = (".engine", ".plan")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DYNAMIC_AXIS_NAMES = ("batch", "height", "width")

E = TypeVar("E", bound=Enum)

_PRECISION_ALIASES = {"float32": "fp32", "float": "fp32", "float16": "fp16", "half": "fp16"}
_PRECISION_ALIASES |= {"int8_fp16": "int8-fp16", "int8+fp16": "int8-fp16"}


def parse_choice(enum: type[E], value: Any, what: str) -> E:
    """``value`` as a member of ``enum`` (by value, case-insensitive): the one validator of each fixed option.

    Raises:
        UserInputError: naming the accepted values.
    """
    if isinstance(value, enum):
        return value
    text = str(value).strip().lower()
    if enum is Precision:
        text = _PRECISION_ALIASES.get(text, text)
    for member in enum:
        if member.value == text:
            return member
    choices = ", ".join(m.value for m in enum)
    raise UserInputError(f"bad {what} {value!r}: choose {choices}")


def parse_precision(value: Any, what: str = "precision") -> Precision:
    """``"FP16"``/``"float16"``/``Precision.FP16`` -> ``Precision.FP16``."""
    return parse_choice(Precision, value, what)


def check_opset(opset: int) -> int:
    """Refuse an opset segdeploy does not write.

    Raises:
        UserInputError: outside 13..20.
    """
    if opset not in SUPPORTED_OPSETS:
        raise UserInputError(
            f"opset {opset} is not supported: choose {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"
        )
    return int(opset)


def dynamic_axes(input_format: InputFormat) -> dict[int, str]:
    """Input axis index -> name of the dynamic axes, for the format's layout."""
    if input_format.layout == "NHWC":
        return {0: "batch", 1: "height", 2: "width"}
    return {0: "batch", 2: "height", 3: "width"}


def file_input_shape(nchw: Shape, input_format: InputFormat) -> tuple[int, ...]:
    """The shape of the file's input tensor for a model input of NCHW shape ``nchw``."""
    n, c, h, w = nchw
    return (n, h, w, c) if input_format.layout == "NHWC" else (n, c, h, w)


@dataclass(frozen=True)
class Preprocessing:
    """How pixels become the network's input: ``(pixel / 255 - mean[c]) / std[c]`` in ``color`` order."""

    input_format: InputFormat = InputFormat.FLOAT32_NCHW
    color: ColorOrder = ColorOrder.RGB
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    @property
    def fused(self) -> bool:
        """uint8 inputs normalize inside the graph; a float32 input is normalized by the caller."""
        return self.input_format is not InputFormat.FLOAT32_NCHW

    def input_order(self, values: tuple[float, ...]) -> tuple[float, ...]:
        """Per-channel ``mean`` or ``std`` (kept in RGB order) in the order of the input's channels.

        A BGR input's first channel is blue: a consumer normalizing the frames it feeds applies
        ``(pixel / 255 - mean[c]) / std[c]`` with these reversed values.
        """
        return tuple(reversed(values)) if self.color is ColorOrder.BGR and len(values) == 3 else tuple(values)


@dataclass
class Metadata:
    """The ``metadata_props`` of a segdeploy ONNX file, parsed (all optional for files from elsewhere).

    Two forms, each with one writer and one reader: ``to_props``/``from_props`` (the ONNX file's string
    key/values) and ``to_dict``/``from_dict`` (JSON, described by ``segdeploy/schemas/metadata.schema.json``).

    Attributes:
        architecture: zoo name, ``file.py:factory``, or the class name of a Python object.
        source: ``"zoo"``, ``"file"`` (a ``file.py:factory``) or ``"object"`` (an ``nn.Module`` given from
            Python, which ``segdeploy verify`` cannot rebuild).
        config: builder options the model was built with (``width_mult``, ``backbone``...).
        num_classes, in_channels: what the network outputs and takes.
        trace_shape: the NCHW shape the export was traced and checked at.
        dynamic_axes: names of the dynamic input axes (empty when static).
        min_size, size_multiple: valid heights and widths are multiples of ``size_multiple`` and >= ``min_size``.
        max_size: the largest valid height or width, when the file's sizes are bounded (None: unbounded).
        rewrites: the graph rewrites applied.
        precision, opset: how the file computes.
        preprocessing: input format, color order, mean and std.
        output: the output kind.
        unpool_inputs: for index unpooling, the value name of each unpooling's pooling input and its window,
            in graph order (verification reads the window choices through them).
        weights: the checkpoint the model was built with, as given (None: the builder's initial weights).
        weights_path: that checkpoint's absolute path at export, to find it from another directory.
        weights_sha256: that checkpoint's sha256, so a moved or changed file is noticed.
        init_seed: the torch seed the model's initial weights were drawn with (rebuilds them identically).
        torch_version: the torch that captured the model.
        segdeploy_version: the writer's version.
    """

    architecture: str | None = None
    source: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    in_channels: int | None = None
    trace_shape: Shape | None = None
    dynamic_axes: tuple[str, ...] = DYNAMIC_AXIS_NAMES
    min_size: int = 1
    size_multiple: int = 1
    max_size: int | None = None
    rewrites: tuple[str, ...] = ()
    precision: Precision = Precision.FP32
    opset: int | None = None
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    output: OutputKind = OutputKind.LOGITS
    unpool_inputs: tuple[tuple[str, int], ...] = ()
    weights: str | None = None
    weights_path: str | None = None
    weights_sha256: str | None = None
    init_seed: int | None = None
    torch_version: str | None = None
    segdeploy_version: str | None = None

    @property
    def static(self) -> bool:
        return not self.dynamic_axes

    def describe_sizes(self) -> str:
        """The input sizes the file takes, in words: ``fixed 1x3x64x64`` or ``accepts only multiples of 32, ...``."""
        if self.static:
            return f"fixed {format_shape(self.trace_shape)}" if self.trace_shape else "fixed (shape unknown)"
        if self._fixed_sides():  # narrowed to its traced height and width, the batch still dynamic
            return f"fixed height x width {self.trace_shape[2]}x{self.trace_shape[3]}, any batch"  # type: ignore[index]
        m = max(self.size_multiple, 1)
        sizes = "any height and width" if m == 1 else f"only multiples of {m}"
        upper = f" and at most {self.max_size}" if self.max_size else ""
        return f"accepts {sizes}, at least {self.min_size}{upper}"

    def check_size(self, nchw: Shape, what: str = "input") -> None:
        """Refuse an NCHW shape the file does not take: a static or fixed file's other sizes, sides off its rule.

        Raises:
            UserInputError: naming the rule and the nearest valid sizes.
        """
        n, c, h, w = (int(d) for d in nchw)
        if self.static and self.trace_shape is not None:
            if (n, c, h, w) != tuple(self.trace_shape):
                raise UserInputError(
                    f"bad {what} shape {format_shape(nchw)}: this file is static, it takes only its fixed "
                    f"{format_shape(self.trace_shape)}"
                )
            return
        if self._fixed_sides() and (h, w) != tuple(self.trace_shape[2:]):  # type: ignore[index]
            raise UserInputError(f"bad {what} shape {format_shape(nchw)}: this file takes {self.describe_sizes()}")
        problem = size_problem(h, w, self.size_multiple, self.min_size, self.max_size)
        if problem:
            raise UserInputError(f"bad {what} shape {format_shape(nchw)}: {problem}")

    def _fixed_sides(self) -> bool:
        return self.trace_shape is not None and not {"height", "width"} <= set(self.dynamic_axes)

    @property
    def index_unpooling(self) -> bool:
        """The network unpools with max-pool indices (rewritten by the ``max_unpool`` rewrite)."""
        return "max_unpool" in self.rewrites

    def to_props(self) -> dict[str, str]:
        """The string key/values written into ``metadata_props``: one per field, lists comma-separated."""
        props = {
            "architecture": self.architecture or "",
            "source": self.source or "",
            "config": json.dumps(self.config, sort_keys=True),
            "num_classes": _str(self.num_classes),
            "in_channels": _str(self.in_channels),
            "trace_shape": format_shape(self.trace_shape) if self.trace_shape else "",
            "dynamic_axes": ",".join(self.dynamic_axes),
            "min_size": str(self.min_size),
            "size_multiple": str(self.size_multiple),
            "max_size": _str(self.max_size),
            "rewrites": ",".join(self.rewrites),
            "precision": self.precision.value,
            "opset": _str(self.opset),
            "input_format": self.preprocessing.input_format.value,
            "color": self.preprocessing.color.value,
            "mean": ",".join(f"{v:g}" for v in self.preprocessing.mean),
            "std": ",".join(f"{v:g}" for v in self.preprocessing.std),
            "output": self.output.value,
            "unpool_inputs": ",".join(f"{name}:{k}" for name, k in self.unpool_inputs),
            "weights": self.weights or "",
            "weights_path": self.weights_path or "",
            "weights_sha256": self.weights_sha256 or "",
            "init_seed": _str(self.init_seed),
            "torch_version": self.torch_version or "",
            "segdeploy_version": self.segdeploy_version or __version__,
            "sizes": self.describe_sizes(),
        }
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], *, where: str = "the file") -> Metadata:
        """Parse ``metadata_props``; missing keys keep their defaults.

        Raises:
            UserInputError: a key segdeploy writes holds a value it cannot parse.
        """

        def get(key: str) -> str | None:
            value = props.get(key, "").strip()
            return value or None

        try:
            pre = Preprocessing(
                input_format=parse_choice(InputFormat, get("input_format") or "float32-nchw", "input_format"),
                color=parse_choice(ColorOrder, get("color") or "rgb", "color"),
                mean=_floats(get("mean")) or IMAGENET_MEAN,
                std=_floats(get("std")) or IMAGENET_STD,
            )
            trace = get("trace_shape") or get("input_shape")
            return cls(
                architecture=get("architecture") or get("model"),
                source=get("source"),
                config=json.loads(get("config") or "{}"),
                num_classes=_int(get("num_classes") or get("classes")),
                in_channels=_int(get("in_channels") or get("channels")),
                trace_shape=parse_shape(trace.strip("[]() ").replace(" ", "")) if trace else None,
                dynamic_axes=tuple(a for a in props.get("dynamic_axes", ",".join(DYNAMIC_AXIS_NAMES)).split(",") if a),
                min_size=_int(get("min_size")) or 1,
                size_multiple=_int(get("size_multiple")) or 1,
                max_size=_int(get("max_size")),
                rewrites=tuple(r for r in (get("rewrites") or "").split(",") if r),
                precision=parse_precision(get("precision") or "fp32", "precision metadata"),
                opset=_int(get("opset")),
                preprocessing=pre,
                output=parse_choice(OutputKind, get("output") or "logits", "output"),
                unpool_inputs=tuple(_unpool_entry(e) for e in (get("unpool_inputs") or "").split(",") if e),
                weights=get("weights"),
                weights_path=get("weights_path"),
                weights_sha256=get("weights_sha256"),
                init_seed=_int(get("init_seed")),
                torch_version=get("torch_version"),
                segdeploy_version=get("segdeploy_version"),
            )
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise UserInputError(f"{where} has unreadable segdeploy metadata: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """The metadata as JSON values (enums by value, tuples as lists); ``metadata.schema.json`` describes it."""
        pre = self.preprocessing
        return {
            **asdict(self),
            **{key: list(getattr(self, key)) for key in ("dynamic_axes", "rewrites")},
            "trace_shape": list(self.trace_shape) if self.trace_shape else None,
            "precision": self.precision.value,
            "output": self.output.value,
            "unpool_inputs": [[name, window] for name, window in self.unpool_inputs],
            "preprocessing": {"input_format": pre.input_format.value, "color": pre.color.value,
                              "mean": list(pre.mean), "std": list(pre.std)},
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "the metadata") -> Metadata:
        """The inverse of :meth:`to_dict`; missing keys keep their defaults.

        Raises:
            UserInputError: an unknown key, or a value of the wrong kind.
        """
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise UserInputError(f"{where} has unknown metadata keys: {', '.join(unknown)}")
        try:
            pre = data.get("preprocessing") or {}
            values = {**data, "preprocessing": Preprocessing(
                parse_choice(InputFormat, pre.get("input_format", "float32-nchw"), "input_format"),
                parse_choice(ColorOrder, pre.get("color", "rgb"), "color"),
                tuple(float(v) for v in pre.get("mean", IMAGENET_MEAN)),
                tuple(float(v) for v in pre.get("std", IMAGENET_STD)),
            )}  # fmt: skip
            for key, read in _FROM_JSON.items():
                if values.get(key) is not None:
                    values[key] = read(values[key])
            return cls(**values)
        except (TypeError, ValueError, AttributeError) as exc:
            raise UserInputError(f"{where} has unreadable segdeploy metadata: {exc}") from None


_FROM_JSON: dict[str, Any] = {
    "trace_shape": lambda v: tuple(int(d) for d in v),
    "dynamic_axes": tuple,
    "rewrites": tuple,
    "unpool_inputs": lambda v: tuple((str(name), int(window)) for name, window in v),
    "precision": lambda v: parse_precision(v, "precision metadata"),
    "output": lambda v: parse_choice(OutputKind, v, "output"),
}
"""How ``Metadata.from_dict`` reads the JSON values that are not already the field's type."""


REQUIRED_KEYS = tuple("num_classes in_channels trace_shape dynamic_axes min_size size_multiple precision opset".split())
"""The metadata a file needs before a bundle (or anything run without the PyTorch model) can describe it."""


def require_metadata(source: str | os.PathLike[str] | onnx.ModelProto, *, where: str | None = None) -> Metadata:
    """The metadata of a file ``segdeploy export`` wrote, refusing files that lack what describes them.

    Args:
        source: a path or a loaded model.
        where: how messages name the file (default: the path, or "the model").

    Raises:
        UserInputError: not ONNX, or metadata keys of ``REQUIRED_KEYS`` missing (named in the message).
    """
    model = load_onnx(source)
    if where is None:
        where = str(source) if isinstance(source, (str, os.PathLike)) else "the model"
    props = {p.key: p.value for p in model.metadata_props}
    missing = [key for key in REQUIRED_KEYS if key not in props or (not props[key].strip() and key != "dynamic_axes")]
    if missing:
        what = "has no segdeploy metadata" if len(missing) == len(REQUIRED_KEYS) else "lacks segdeploy metadata"
        raise UserInputError(f"{where} {what} ({', '.join(missing)} missing): export it with `segdeploy export`")
    return Metadata.from_props(props, where=where)


def load_onnx(source: str | os.PathLike[str] | onnx.ModelProto, *, load_weights: bool = False) -> onnx.ModelProto:
    """Read an ONNX model, refusing anything that is not one.

    Args:
        source: a path to a ``.onnx`` file, or an already loaded ``ModelProto`` (returned as is).
        load_weights: also load external weight files (segdeploy writes none).

    Raises:
        UserInputError: missing, empty, unparsable or invalid file, in one line.
    """
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source
    path = Path(source)
    if not path.exists():
        raise UserInputError(f"{path} does not exist; expected an ONNX file (.onnx)")
    if not path.is_file():
        raise UserInputError(f"{path} is not a file; expected an ONNX file (.onnx)")
    if path.stat().st_size == 0:
        raise UserInputError(f"{path} is empty, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:  # protobuf raises DecodeError and friends on random or truncated bytes
        raise UserInputError(
            f"{path} is not an ONNX model (protobuf parsing failed: {type(exc).__name__}); "
            "is it truncated or another format?"
        ) from None
    if not model.graph.node or not model.opset_import:
        raise UserInputError(
            f"{path} is not an ONNX model (no graph nodes or opset); is it truncated or another format?"
        )
    return model


def read_metadata(source: str | os.PathLike[str] | onnx.ModelProto) -> Metadata:
    """The parsed segdeploy metadata of an ONNX file (defaults for what it lacks).

    Raises:
        UserInputError: the file is missing or not ONNX, or its metadata is unreadable.
    """
    model = load_onnx(source)
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the model"
    return Metadata.from_props({p.key: p.value for p in model.metadata_props}, where=where)


def is_engine_path(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in ENGINE_SUFFIXES


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _floats(text: str | None) -> tuple[float, ...] | None:
    return tuple(float(v) for v in text.split(",")) if text else None


def _unpool_entry(text: str) -> tuple[str, int]:
    name, _, window = text.rpartition(":")
    return name, int(window)
