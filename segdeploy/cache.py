"""Where exported ONNX files and built engines are kept, keyed by everything that makes them differ.

An exported file depends on the model, its options and classes, the input
shape, opset and precision, segdeploy's model and export code, and the
exporters' versions. An engine depends on the exact ONNX bytes, the profile,
the precision, the TensorRT version and the GPU: after a TensorRT upgrade or on
another GPU the key changes and the engine is rebuilt, never served stale.

Files live in ``$SEGDEPLOY_CACHE`` or ``~/.cache/segdeploy`` (``onnx/``, ``engines/``). This module
names them; ``segdeploy.pipeline.cached_onnx`` and ``cached_engine`` export or build what is missing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segdeploy.artifact import DEFAULT_OPSET, Precision, parse_precision
from segdeploy.fileio import cache_root
from segdeploy.shapes import Shape


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def export_fingerprint() -> str:
    """A digest of what decides an exported file: segdeploy's model and export code and the exporters' versions.

    The version string alone would keep serving a stale file to anyone editing a
    model or a rewrite in a checkout; hashing the sources costs a few milliseconds.
    """
    from importlib import metadata

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    sources = [
        package / "precision.py",
        package / "artifact.py",
        *sorted((package / "models").rglob("*.py")),
        *sorted((package / "export").rglob("*.py")),
    ]
    for source in sources:
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    for dist in ("torch", "onnx", "onnxscript", "onnxsim", "onnxconverter-common"):
        try:
            digest.update(f"{dist}={metadata.version(dist)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist}=none\0".encode())
    return digest.hexdigest()[:16]


def calibration_digest(source: str | os.PathLike[str] | None, calib_size: int) -> str | None:
    """A digest of INT8 calibration data: a file's bytes, or a directory's file names and bytes (None: none)."""
    if source is None:
        return None
    from segdeploy.fileio import sha256_file

    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = [f"{p.relative_to(path).as_posix() if path.is_dir() else p.name}={sha256_file(p)}" for p in files]
    return _digest({"files": parts, "calib_size": calib_size})


def onnx_cache_path(
    name: str,
    *,
    config: dict[str, Any],
    shape: Shape,
    precision: Precision | str = Precision.FP32,
    num_classes: int = 21,
    opset: int = DEFAULT_OPSET,
    calibration: str | os.PathLike[str] | None = None,
    calib_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where zoo model ``name``'s export with these settings is kept: ``onnx/<name>-<opset>-<precision>-<key>.onnx``.

    INT8 exports are keyed by their calibration data too (``calibration_digest``).
    """
    precision = parse_precision(precision)
    key = _digest(
        {
            "model": name,
            "config": config,
            "shape": list(shape),
            "precision": precision.value,
            "num_classes": num_classes,
            "opset": opset,
            "calibration": calibration_digest(calibration, calib_size),
            "code": export_fingerprint(),
        }
    )
    return cache_root(cache_dir) / "onnx" / f"{name}-{opset}-{precision.value}-{key}.onnx"


def engine_cache_path(
    onnx_path: Path,
    *,
    profile: Sequence[Sequence[int]],
    precision: Precision | str,
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Where an engine is kept: its key covers the ONNX bytes, the profile, precision, TensorRT version and GPU."""
    from segdeploy.fileio import sha256_file

    precision = parse_precision(precision)
    key = _digest(
        {
            "onnx": sha256_file(onnx_path),
            "profile": [list(p) for p in profile],
            "precision": precision.value,
            "tensorrt": trt_version,
            "gpu": gpu_name,
            "compute_capability": compute_capability,
        }
    )
    return cache_root(cache_dir) / "engines" / f"{onnx_path.stem}-{precision.value}-{key}.engine"
