"""Runners for torch, ONNX Runtime and TensorRT behind one contract (``base.Runner``).

Nothing heavy is imported here: ``open_runner`` imports the backend it picks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segdeploy.artifact import ENGINE_SUFFIXES, ONNX_SUFFIX, Precision, Runtime, parse_choice
from segdeploy.errors import UserInputError
from segdeploy.runtime.base import Runner

__all__ = ["Runner", "open_runner"]


def open_runner(
    source: Any,
    *,
    runtime: Runtime | str | None = None,
    precision: Precision | str | None = None,
    threads: int | None = None,
) -> Runner:
    """Pick the runner for ``source``.

    Args:
        source: an ``nn.Module`` (torch), a ``.onnx`` path (ONNX Runtime), a ``.engine``/``.plan``
            path (TensorRT), or a ``Runner`` (returned as is).
        runtime: force ``torch``, ``ort`` or ``trt`` instead of choosing by type/suffix.
        precision: the model's precision; default: the file's metadata (ONNX) or sidecar (engine), else fp32.
        threads: CPU threads for torch / ONNX Runtime.

    Returns:
        A runner, not yet activated (use it as a context manager).

    Raises:
        UserInputError: unknown runtime, or a path whose suffix names no runtime.
        MissingDependencyError: TensorRT requested but not installed (raised by the TensorRT runner).
    """
    if isinstance(source, Runner):
        return source
    chosen = parse_choice(Runtime, runtime, "runtime") if runtime is not None else None
    if not isinstance(source, (str, os.PathLike)):
        from torch import nn

        if not isinstance(source, nn.Module):
            raise UserInputError(f"cannot run a {type(source).__name__}: expected an nn.Module, .onnx or .engine path")
        if chosen not in (None, Runtime.TORCH):
            raise UserInputError(f"a PyTorch module runs on the torch runtime, not {chosen.value}; export it first")
        from segdeploy.runtime.torch_runner import TorchRunner

        return TorchRunner(source, precision=precision or Precision.FP32, threads=threads)

    path = Path(source)
    suffix = path.suffix.lower()
    if chosen is None:
        chosen = Runtime.ORT if suffix == ONNX_SUFFIX else Runtime.TRT if suffix in ENGINE_SUFFIXES else None
    if chosen is None:
        raise UserInputError(f"{path}: unknown model file type {path.suffix!r}; expected .onnx, .engine or .plan")
    if chosen is Runtime.ORT:
        from segdeploy.runtime.ort_runner import OrtRunner

        if precision is None and path.is_file():
            from segdeploy.artifact import read_metadata

            precision = read_metadata(path).precision
        return OrtRunner(path, precision=precision or Precision.FP32, threads=threads)
    if chosen is Runtime.TRT:
        if suffix == ONNX_SUFFIX:
            raise UserInputError(f"{path} is an ONNX file: build a TensorRT engine from it first (segdeploy build)")
        from segdeploy.runtime.trt_runner import TrtRunner

        return TrtRunner(path, precision=precision)
    raise UserInputError(f"{path} is a file; the torch engine needs an nn.Module")
