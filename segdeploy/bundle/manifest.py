"""The bundle's layout and its manifest, ``segdeploy.json`` (schema version 1).

The manifest is the contract with every consumer of a bundle (the C++ runtime in ``cpp/`` reads it
with ``load_manifest``): what the model takes and gives, how to feed it, its classes and colors, the
TensorRT engine's facts and the sha256 of every file. ``docs/bundle.md`` describes each field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy._version import __version__
from segdeploy.artifact import INPUT_NAME, OUTPUT_NAMES, Metadata, OutputKind, file_input_shape
from segdeploy.errors import UserInputError

SCHEMA_VERSION = 1
MANIFEST = "segdeploy.json"
MODEL = "model.onnx"
PLAN = "model.plan"
LABELS = "labels.txt"
GOLDEN_INPUT = "golden/input.npy"
GOLDEN_OUTPUT = "golden/output.npy"
README = "README.md"
DEEPSTREAM_CONFIG = "deepstream/config_infer_primary.txt"

TRITON_DEFAULT_MAX_BATCH = 8
"""max_batch_size of the Triton configs when no TensorRT profile bounds the batch."""
GOLDEN_MAX_SIDE = 128
"""The golden input's dynamic sides are the traced ones, capped here: a golden pair stays small."""

FLOAT_GOLDEN_RTOL, FLOAT_GOLDEN_ATOL = 1e-4, 1e-6
"""A float output reproduces its golden when ``max|a - b| <= RTOL * max|b| + ATOL``."""
CLASSMAP_GOLDEN_MAX_DIFFERING = 0.001
"""A class map reproduces its golden when at most this fraction of pixels differ (near-ties between builds)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str) -> str:
    """A model name fit for a directory and a Triton model: letters, digits, ``_``, ``.``, ``-``.

    Raises:
        UserInputError: anything else.
    """
    if not _NAME.match(name) or name.endswith("_trt"):
        raise UserInputError(
            f"bad bundle name {name!r}: use letters, digits, '_', '.' or '-' (not ending in '_trt'), "
            "up to 100 characters"
        )
    return name


def default_name(onnx_path: Path) -> str:
    """The ONNX file's stem made into a valid name (``unet.fp16.onnx`` -> ``unet_fp16``)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", onnx_path.stem).strip("_-") or "model"
    name = name if name[0].isalnum() else f"m{name}"
    return name[:-4] + "_model" if name.endswith("_trt") else name[:100]


def default_labels(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def read_labels(path: Path, num_classes: int) -> list[str]:
    """One label per line (trailing blank lines ignored), exactly ``num_classes`` of them.

    Raises:
        UserInputError: unreadable file, blank or duplicate labels, or a count that is not ``num_classes``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read labels file {path}: {exc}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != num_classes:
        raise UserInputError(f"{path} has {len(labels)} labels but the model has {num_classes} classes")
    blank = [i + 1 for i, label in enumerate(labels) if not label]
    if blank:
        raise UserInputError(f"{path} line {blank[0]} is blank: one label per line")
    if len(set(labels)) != len(labels):
        duplicate = next(label for label in labels if labels.count(label) > 1)
        raise UserInputError(f"{path} lists label {duplicate!r} twice")
    return labels


def palette(count: int) -> list[list[int]]:
    """``count`` RGB colors: the PASCAL VOC color map (black, then colors spread by the bits of the index).

    Its first 256 colors are distinct; beyond that the map repeats.
    """
    colors = []
    for index in range(count):
        c, r, g, b = index % 256, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append([r, g, b])
    return colors


def golden_shape(metadata: Metadata) -> tuple[int, int, int, int]:
    """The NCHW shape of the golden input: the traced one, dynamic sides capped at ``GOLDEN_MAX_SIDE``."""
    n, c, h, w = metadata.trace_shape  # type: ignore[misc]

    def side(traced: int, axis: str) -> int:
        if axis not in metadata.dynamic_axes or traced <= GOLDEN_MAX_SIDE:
            return traced
        m = metadata.size_multiple
        return max(GOLDEN_MAX_SIDE // m * m, -(-metadata.min_size // m) * m)

    return n, c, side(h, "height"), side(w, "width")


def golden_input(metadata: Metadata, seed: int = 0) -> np.ndarray:
    """One batch in the file's own input format: a smooth noisy image, normalized for a float32 input."""
    pre = metadata.preprocessing
    n, c, h, w = golden_shape(metadata)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    slopes = rng.uniform(-90, 90, (2, n, c, 1, 1))
    base = rng.uniform(40, 215, (n, c, 1, 1)) + slopes[0] * yy + slopes[1] * xx
    pixels = np.clip(base + rng.normal(0, 20, (n, c, h, w)), 0, 255).round().astype(np.uint8)  # NCHW, input order
    if pre.fused:
        return np.ascontiguousarray(pixels.transpose(0, 2, 3, 1) if pre.input_format.layout == "NHWC" else pixels)
    mean = np.asarray(pre.input_order(pre.mean), dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.input_order(pre.std), dtype=np.float32).reshape(1, -1, 1, 1)
    return np.ascontiguousarray((pixels.astype(np.float32) / np.float32(255) - mean) / std, dtype=np.float32)


def compare_golden(output: np.ndarray, golden: np.ndarray, kind: OutputKind) -> str | None:
    """None when ``output`` reproduces ``golden`` by the bundle's rule, else what differs."""
    if output.shape != golden.shape:
        return f"shape {tuple(output.shape)} instead of the golden {tuple(golden.shape)}"
    if output.dtype != golden.dtype:
        return f"dtype {output.dtype} instead of the golden {golden.dtype}"
    if kind is OutputKind.CLASSMAP:
        differing = int(np.count_nonzero(output != golden))
        if differing > CLASSMAP_GOLDEN_MAX_DIFFERING * golden.size:
            return f"{differing} of {golden.size} class-map pixels differ (at most {CLASSMAP_GOLDEN_MAX_DIFFERING:.1%})"
        return None
    a, b = output.astype(np.float64), golden.astype(np.float64)
    error = float(np.max(np.abs(a - b))) if a.size else 0.0
    limit = FLOAT_GOLDEN_RTOL * (float(np.max(np.abs(b))) if b.size else 0.0) + FLOAT_GOLDEN_ATOL
    if not error <= limit:  # NaN fails too
        return f"max|out - golden| = {error:.3g} > limit {limit:.3g}"
    return None


def dumps(manifest: dict[str, Any]) -> str:
    """The manifest as JSON for people too: objects indented, lists of numbers or strings on one line."""

    def render(value: Any, indent: str) -> str:
        inner = indent + "  "
        if isinstance(value, dict) and value:
            items = [f"{inner}{json.dumps(k)}: {render(v, inner)}" for k, v in value.items()]
            return "{\n" + ",\n".join(items) + f"\n{indent}}}"
        if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            return "[\n" + ",\n".join(inner + render(v, inner) for v in value) + f"\n{indent}]"
        return json.dumps(value)

    return render(manifest, "") + "\n"


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` except the manifest, keyed by relative path with '/', sorted."""
    from segdeploy.fileio import sha256_file

    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != MANIFEST
    }


def build_manifest(
    *,
    name: str,
    metadata: Metadata,
    labels: Sequence[str],
    engine: dict[str, Any] | None,
    files: dict[str, str],
) -> dict[str, Any]:
    """The manifest of a bundle.

    Args:
        name: the bundle's model name.
        metadata: the ONNX file's parsed metadata.
        labels: one per class.
        engine: the engine sidecar (``segdeploy build``'s JSON) when the bundle has a plan, else None.
        files: relative path -> sha256 of every other file.
    """
    pre = metadata.preprocessing
    profile = None
    if engine is not None:
        profile = {key: [int(d) for d in engine["profile"][key]] for key in ("min", "opt", "max")}
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "architecture": metadata.architecture or "",
        "num_classes": metadata.num_classes,
        "labels": list(labels),
        "palette": palette(max(int(metadata.num_classes or 0), 2)),
        "precision": metadata.precision.value,
        "opset": metadata.opset,
        "input": {
            "name": INPUT_NAME,
            "dtype": pre.input_format.dtype,
            "layout": pre.input_format.layout,
            "color": pre.color.value,
            "mean": list(pre.input_order(pre.mean)),
            "std": list(pre.input_order(pre.std)),
            "normalization_fused": pre.fused,
            "shape": list(file_input_shape(metadata.trace_shape, pre.input_format)),  # type: ignore[arg-type]
            "dynamic_axes": list(metadata.dynamic_axes),
            "size_multiple": metadata.size_multiple,
            "min_size": metadata.min_size,
            "tensorrt_profile": profile,
        },
        "output": {
            "name": OUTPUT_NAMES[metadata.output],
            "kind": metadata.output.value,
            "dtype": metadata.output.dtype,
            "layout": metadata.output.layout,
        },
        "engine": None
        if engine is None
        else {
            "file": PLAN,
            "tensorrt_version": str(engine["tensorrt_version"]),
            "gpu_name": str(engine["gpu_name"]),
            "compute_capability": str(engine["compute_capability"]),
            "precision": str(engine["precision"]),
        },
        "golden": {"input": GOLDEN_INPUT, "output": GOLDEN_OUTPUT},
        "files": dict(files),
        "segdeploy_version": __version__,
    }
