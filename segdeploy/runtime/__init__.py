"""Runners for torch, ONNX Runtime and TensorRT behind one contract (``base.Runner``).

Nothing heavy is imported here: ``open_runner`` imports the backend it picks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from segdeploy.errors import UserInputError
from segdeploy.runtime.base import Runner

__all__ = ["Runner", "open_runner"]

ENGINES = ("torch", "ort", "trt")
_SUFFIX_ENGINE = {".onnx": "ort", ".engine": "trt", ".plan": "trt"}


def open_runner(
    source: Any, *, engine: str | None = None, precision: str = "fp32", threads: int | None = None
) -> Runner:
    """Pick the runner for ``source``.

    Args:
        source: an ``nn.Module`` (torch), a ``.onnx`` path (ONNX Runtime), a ``.engine``/``.plan``
            path (TensorRT), or a ``Runner`` (returned as is).
        engine: force ``"torch"``, ``"ort"`` or ``"trt"`` instead of choosing by type/suffix.
        precision: ``"fp32"`` or ``"fp16"``.
        threads: CPU threads for torch / ONNX Runtime.

    Returns:
        A runner, not yet activated (use it as a context manager).

    Raises:
        UserInputError: unknown engine, or a path whose suffix names no runtime.
        MissingDependencyError: TensorRT requested but not installed (raised by the TensorRT runner).
    """
    if isinstance(source, Runner):
        return source
    if engine is not None and engine not in ENGINES:
        raise UserInputError(f"unknown engine {engine!r}: expected one of {', '.join(ENGINES)}")
    if not isinstance(source, (str, os.PathLike)):
        from torch import nn

        if not isinstance(source, nn.Module):
            raise UserInputError(f"cannot run a {type(source).__name__}: expected an nn.Module, .onnx or .engine path")
        if engine not in (None, "torch"):
            raise UserInputError(f"a PyTorch module runs on the torch engine, not {engine!r}; export it first")
        from segdeploy.runtime.torch_runner import TorchRunner

        return TorchRunner(source, precision=precision, threads=threads)

    path = Path(source)
    chosen = engine or _SUFFIX_ENGINE.get(path.suffix.lower())
    if chosen is None:
        raise UserInputError(f"{path}: unknown model file type {path.suffix!r}; expected .onnx, .engine or .plan")
    if chosen == "ort":
        from segdeploy.runtime.ort_runner import OrtRunner

        return OrtRunner(path, precision=precision, threads=threads)
    if chosen == "trt":
        if path.suffix.lower() == ".onnx":
            raise UserInputError(f"{path} is an ONNX file: build a TensorRT engine from it first (segdeploy build)")
        from segdeploy.runtime.trt_runner import TrtRunner

        return TrtRunner(path, precision=precision)
    raise UserInputError(f"{path} is a file; the torch engine needs an nn.Module")
