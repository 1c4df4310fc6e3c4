"""The bundle's manifest, ``segdeploy.json`` (schema version 2): :class:`BundleManifest`.

The manifest is the contract with every consumer of a bundle (the C++ runtime in ``cpp/`` reads it): what
the model takes and gives, how a frame becomes its input and its output a class map (``pipeline``), its
classes and colors, the TensorRT engine's facts, where the model came from (``provenance``) and the sha256
of every file. :meth:`BundleManifest.read` is its one reader, :meth:`BundleManifest.write` its one writer;
``segdeploy/schemas/manifest.schema.json`` is its JSON Schema and ``docs/bundle.md`` describes each field.
Names, labels and colors: ``segdeploy.bundle.layout``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from segdeploy._version import __version__
from segdeploy.artifact import (
    DYNAMIC_AXIS_NAMES,
    INPUT_NAME,
    OUTPUT_NAMES,
    ColorOrder,
    InputFormat,
    Metadata,
    OutputKind,
    Precision,
    file_input_shape,
    parse_choice,
)
from segdeploy.bundle.fields import MANIFEST, Fields, ManifestError, dumps, inside
from segdeploy.errors import UserInputError
from segdeploy.frames import FramePipeline

__all__ = ["MANIFEST", "BundleManifest", "ManifestError", "dumps", "inside"]

SCHEMA_VERSION = 2
MODEL = "model.onnx"
PLAN = "model.plan"
LABELS = "labels.txt"
GOLDEN_INPUT = "golden/input.npy"
GOLDEN_OUTPUT = "golden/output.npy"
GOLDEN_FRAMES = "golden/frames.npy"
README = "README.md"
CLIENT = "client.py"
TRITON_DIR = "triton"
DEEPSTREAM_CONFIG = "deepstream/config_infer_primary.txt"
DEEPSTREAM_ONNX = "deepstream/nvinfer.onnx"


class TritonKind(str, Enum):
    """What a Triton model of the bundle serves: the ONNX (ONNX Runtime backend) or the plan (TensorRT)."""

    ONNX = "onnx"
    PLAN = "plan"


class EngineFacts(str, Enum):
    """Where the engine's facts come from: its ``segdeploy build`` sidecar, or the bundle's command line."""

    SIDECAR = "sidecar"
    COMMAND_LINE = "command-line"


class DeepStreamMode(str, Enum):
    """``derived``: nvinfer runs ``deepstream/nvinfer.onnx``; ``direct``: the bundle's model and plan as they are."""

    DERIVED = "derived"
    DIRECT = "direct"


@dataclass(frozen=True)
class TensorProfile:
    """An engine's optimization profile in the input's layout."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class InputSpec:
    """The model input: format, color order, normalization (input channel order), shape and valid sizes."""

    input_format: InputFormat
    color: ColorOrder
    mean: tuple[float, ...]
    std: tuple[float, ...]
    shape: tuple[int, ...]
    dynamic_axes: tuple[str, ...]
    size_multiple: int
    min_size: int
    max_size: int | None = None
    tensorrt_profile: TensorProfile | None = None
    name: str = INPUT_NAME

    @property
    def dtype(self) -> str:
        return self.input_format.dtype

    @property
    def layout(self) -> str:
        return self.input_format.layout

    @property
    def normalization_fused(self) -> bool:
        return self.input_format is not InputFormat.FLOAT32_NCHW

    @property
    def channels(self) -> int:
        return int(self.shape[self.layout.index("C")])

    def axis(self, letter: str) -> int:
        """The traced size of axis ``N``, ``C``, ``H`` or ``W``."""
        return int(self.shape[self.layout.index(letter)])

    def dynamic(self, letter: str) -> bool:
        return {"N": "batch", "H": "height", "W": "width"}.get(letter) in self.dynamic_axes

    def valid_side(self, side: int) -> bool:
        """Whether a height or width is one the model takes."""
        too_big = self.max_size is not None and side > self.max_size
        return side >= self.min_size and side % self.size_multiple == 0 and not too_big


@dataclass(frozen=True)
class OutputSpec:
    kind: OutputKind

    @property
    def name(self) -> str:
        return OUTPUT_NAMES[self.kind]

    @property
    def dtype(self) -> str:
        return self.kind.dtype

    @property
    def layout(self) -> str:
        return self.kind.layout


@dataclass(frozen=True)
class EngineInfo:
    file: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision
    facts: EngineFacts = EngineFacts.SIDECAR


@dataclass(frozen=True)
class Golden:
    input: str = GOLDEN_INPUT
    output: str = GOLDEN_OUTPUT
    frames: str = GOLDEN_FRAMES


@dataclass(frozen=True)
class DeepStreamFiles:
    mode: DeepStreamMode
    config: str = DEEPSTREAM_CONFIG
    onnx: str | None = DEEPSTREAM_ONNX


@dataclass(frozen=True)
class Provenance:
    """Where the model came from; versions are those recorded at export, ``onnx_version`` that of bundling."""

    architecture: str | None
    source: str | None
    config: dict[str, Any]
    weights: str | None
    weights_sha256: str | None
    init_seed: int | None
    model_sha256: str
    segdeploy_version: str | None
    torch_version: str | None
    onnx_version: str
    onnx_ir_version: int
    onnx_producer: str

    @classmethod
    def of(cls, metadata: Metadata, *, model_sha256: str, ir_version: int, producer: str) -> Provenance:
        import onnx

        return cls(
            metadata.architecture,
            metadata.source,
            dict(metadata.config),
            metadata.weights,
            metadata.weights_sha256,
            metadata.init_seed,
            model_sha256,
            metadata.segdeploy_version,
            metadata.torch_version,
            onnx.__version__,
            int(ir_version),
            producer,
        )


@dataclass(frozen=True)
class BundleManifest:
    """``segdeploy.json``, typed. ``to_dict`` and ``from_dict`` keep every version-1 field name and meaning."""

    name: str
    architecture: str
    num_classes: int
    labels: tuple[str, ...]
    palette: tuple[tuple[int, int, int], ...]
    precision: Precision
    opset: int
    input: InputSpec
    output: OutputSpec
    engine: EngineInfo | None
    golden: Golden
    pipeline: FramePipeline
    provenance: Provenance
    deepstream: DeepStreamFiles
    triton: dict[str, TritonKind]
    files: dict[str, str] = field(default_factory=dict)
    segdeploy_version: str = __version__

    # ------------------------------------------------------------------ from a model
    @staticmethod
    def input_of(metadata: Metadata, profile: TensorProfile | None = None) -> InputSpec:
        """The input section a file's metadata describes."""
        pre = metadata.preprocessing
        return InputSpec(
            input_format=pre.input_format,
            color=pre.color,
            mean=tuple(float(v) for v in pre.input_order(pre.mean)),
            std=tuple(float(v) for v in pre.input_order(pre.std)),
            shape=tuple(int(d) for d in file_input_shape(metadata.trace_shape, pre.input_format)),  # type: ignore[arg-type]
            dynamic_axes=tuple(metadata.dynamic_axes),
            size_multiple=max(int(metadata.size_multiple), 1),
            min_size=max(int(metadata.min_size), 1),
            max_size=metadata.max_size,
            tensorrt_profile=profile,
        )

    def with_files(self, files: dict[str, str]) -> BundleManifest:
        return replace(self, files=dict(files))

    # ------------------------------------------------------------------ the one writer
    def to_dict(self) -> dict[str, Any]:
        spec, profile = self.input, self.input.tensorrt_profile
        prov = self.provenance
        return {
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "architecture": self.architecture,
            "num_classes": self.num_classes,
            "labels": list(self.labels),
            "palette": [list(c) for c in self.palette],
            "precision": self.precision.value,
            "opset": self.opset,
            "input": {
                "name": spec.name,
                "dtype": spec.dtype,
                "layout": spec.layout,
                "color": spec.color.value,
                "mean": list(spec.mean),
                "std": list(spec.std),
                "normalization_fused": spec.normalization_fused,
                "shape": list(spec.shape),
                "dynamic_axes": list(spec.dynamic_axes),
                "size_multiple": spec.size_multiple,
                "min_size": spec.min_size,
                "max_size": spec.max_size,
                "tensorrt_profile": None
                if profile is None
                else {"min": list(profile.min), "opt": list(profile.opt), "max": list(profile.max)},
            },
            "output": {
                "name": self.output.name,
                "kind": self.output.kind.value,
                "dtype": self.output.dtype,
                "layout": self.output.layout,
            },
            "engine": None
            if self.engine is None
            else {
                "file": self.engine.file,
                "tensorrt_version": self.engine.tensorrt_version,
                "gpu_name": self.engine.gpu_name,
                "compute_capability": self.engine.compute_capability,
                "precision": self.engine.precision.value,
                "facts": self.engine.facts.value,
            },
            "golden": {"input": self.golden.input, "output": self.golden.output, "frames": self.golden.frames},
            "pipeline": self.pipeline.to_dict(),
            "provenance": {
                "architecture": prov.architecture,
                "source": prov.source,
                "config": prov.config,
                "weights": prov.weights,
                "weights_sha256": prov.weights_sha256,
                "init_seed": prov.init_seed,
                "model_sha256": prov.model_sha256,
                "segdeploy_version": prov.segdeploy_version,
                "torch_version": prov.torch_version,
                "onnx_version": prov.onnx_version,
                "onnx_ir_version": prov.onnx_ir_version,
                "onnx_producer": prov.onnx_producer,
            },
            "deepstream": {
                "mode": self.deepstream.mode.value,
                "config": self.deepstream.config,
                "onnx": self.deepstream.onnx,
            },
            "triton": {"models": {name: kind.value for name, kind in self.triton.items()}},
            "files": dict(self.files),
            "segdeploy_version": self.segdeploy_version,
        }

    def write(self, root: Path) -> Path:
        """Write ``root/segdeploy.json``."""
        path = root / MANIFEST
        path.write_text(dumps(self.to_dict()), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ the one reader
    @classmethod
    def read(cls, root: Path) -> BundleManifest:
        """Read and parse ``root/segdeploy.json``.

        Raises:
            ManifestError: not JSON, another schema version, or a field that does not fit (named).
        """
        try:
            data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{MANIFEST} is not valid JSON ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> BundleManifest:
        """Parse the manifest's JSON object, strictly.

        Raises:
            ManifestError: naming the first field that does not fit.
        """
        top = Fields(data, "")
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ManifestError(
                f"{MANIFEST} has schema_version {version!r}; this segdeploy reads {SCHEMA_VERSION}"
                + (" (bundle the ONNX again with this segdeploy)" if version == 1 else "")
            )
        spec = _read_input(top.section("input"))
        out = top.section("output")
        kind = out.choice("kind", OutputKind)
        for key, value in (("name", OUTPUT_NAMES[kind]), ("dtype", kind.dtype), ("layout", kind.layout)):
            if out.get(key, str) != value:
                raise out.error(key, f"is {out.get(key, str)!r}; a {kind.value} output has {value!r}")
        count = top.get("num_classes", int)
        if count < 1:
            raise top.error("num_classes", "is not positive")
        labels = tuple(top.get("labels", list))
        if len(labels) != count or any(not isinstance(label, str) or not label for label in labels):
            raise top.error("labels", f"must be {count} non-empty strings (one per class)")
        palette = top.get("palette", list)
        if len(palette) < max(count, 2) or any(
            not isinstance(c, list) or len(c) != 3 or any(type(v) is not int or not 0 <= v <= 255 for v in c)
            for c in palette
        ):
            raise top.error("palette", f"needs {max(count, 2)} [r, g, b] colors of 0..255")
        engine = top.optional("engine", dict)
        golden = top.section("golden")
        files = top.get("files", dict)
        for path, digest in files.items():
            if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise top.error(f"files.{path}", "is not a sha256")
        triton = top.section("triton").get("models", dict)
        try:
            pipeline = FramePipeline.from_dict(top.get("pipeline", dict))
        except UserInputError as exc:
            raise ManifestError(f"{MANIFEST}: {exc}") from None
        ds = top.section("deepstream")
        manifest = cls(
            name=top.get("name", str),
            architecture=top.get("architecture", str),
            num_classes=count,
            labels=labels,
            palette=tuple(tuple(c) for c in palette),  # type: ignore[misc]
            precision=top.choice("precision", Precision),
            opset=top.get("opset", int),
            input=spec,
            output=OutputSpec(kind),
            engine=None if engine is None else _read_engine(Fields(engine, "engine.")),
            golden=Golden(golden.get("input", str), golden.get("output", str), golden.get("frames", str)),
            pipeline=pipeline,
            provenance=_read_provenance(top.section("provenance")),
            deepstream=DeepStreamFiles(
                ds.choice("mode", DeepStreamMode), ds.get("config", str), ds.optional("onnx", str)
            ),
            triton={str(k): parse_choice(TritonKind, v, "triton model kind") for k, v in triton.items()},
            files={str(k): str(v) for k, v in files.items()},
            segdeploy_version=top.get("segdeploy_version", str),
        )
        paths = [*manifest.files, manifest.golden.input, manifest.golden.output, manifest.golden.frames]
        paths += [manifest.deepstream.config] + ([manifest.deepstream.onnx] if manifest.deepstream.onnx else [])
        paths += [manifest.engine.file] if manifest.engine else []
        for path in paths:
            if not inside(path):
                raise ManifestError(f"{MANIFEST}: path {path!r} leaves the bundle")
        return manifest


def _read_input(f: Fields) -> InputSpec:
    dtype, layout = f.get("dtype", str), f.get("layout", str)
    formats = {(fmt.dtype, fmt.layout): fmt for fmt in InputFormat}
    if (dtype, layout) not in formats:
        raise f.error("dtype", f"{dtype} {layout} is not an input segdeploy writes (float32 NCHW, uint8 NCHW/NHWC)")
    fmt = formats[(dtype, layout)]
    if f.get("normalization_fused", bool) != (fmt is not InputFormat.FLOAT32_NCHW):
        raise f.error("normalization_fused", f"contradicts a {dtype} input")
    shape = tuple(f.get("shape", list))
    if len(shape) != 4 or any(type(d) is not int or d < 1 for d in shape):
        raise f.error("shape", "is not 4 positive integers")
    axes = tuple(f.get("dynamic_axes", list))
    if len(set(axes)) != len(axes) or any(a not in DYNAMIC_AXIS_NAMES for a in axes):
        raise f.error("dynamic_axes", f"must be distinct names of {', '.join(DYNAMIC_AXIS_NAMES)}")
    channels = shape[layout.index("C")]
    mean, std = (tuple(f.get(key, list)) for key in ("mean", "std"))
    for key, values in (("mean", mean), ("std", std)):
        if len(values) != channels or any(type(v) not in (int, float) for v in values):
            raise f.error(key, f"needs {channels} numbers (one per input channel)")
    if any(s <= 0 for s in std):
        raise f.error("std", "must be positive")
    profile = f.optional("tensorrt_profile", dict)
    if profile is not None:
        p = Fields(profile, f.path + "tensorrt_profile.")
        dims = [tuple(p.get(k, list)) for k in ("min", "opt", "max")]
        if any(len(d) != 4 or any(type(v) is not int or v < 1 for v in d) for d in dims):
            raise p.error("min", "min, opt and max must be 4 positive integers each")
        profile = TensorProfile(*dims)
    size_multiple, min_size = f.get("size_multiple", int), f.get("min_size", int)
    max_size = f.optional("max_size", int)
    if size_multiple < 1 or min_size < 1 or (max_size is not None and max_size < min_size):
        raise f.error("size_multiple", "size_multiple and min_size must be positive, max_size >= min_size")
    name = f.get("name", str)
    if name != INPUT_NAME:
        raise f.error("name", f"is {name!r}; a segdeploy input is {INPUT_NAME!r}")
    return InputSpec(
        input_format=fmt,
        color=f.choice("color", ColorOrder),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        shape=shape,  # type: ignore[arg-type]
        dynamic_axes=axes,  # type: ignore[arg-type]
        size_multiple=size_multiple,
        min_size=min_size,
        max_size=max_size,
        tensorrt_profile=profile,
    )


def _read_engine(f: Fields) -> EngineInfo:
    return EngineInfo(
        file=f.get("file", str),
        tensorrt_version=f.get("tensorrt_version", str),
        gpu_name=f.get("gpu_name", str),
        compute_capability=f.get("compute_capability", str),
        precision=f.choice("precision", Precision),
        facts=f.choice("facts", EngineFacts),
    )


def _read_provenance(f: Fields) -> Provenance:
    return Provenance(
        architecture=f.optional("architecture", str),
        source=f.optional("source", str),
        config=f.get("config", dict),
        weights=f.optional("weights", str),
        weights_sha256=f.optional("weights_sha256", str),
        init_seed=f.optional("init_seed", int),
        model_sha256=f.get("model_sha256", str),
        segdeploy_version=f.optional("segdeploy_version", str),
        torch_version=f.optional("torch_version", str),
        onnx_version=f.get("onnx_version", str),
        onnx_ir_version=f.get("onnx_ir_version", int),
        onnx_producer=f.get("onnx_producer", str),
    )
