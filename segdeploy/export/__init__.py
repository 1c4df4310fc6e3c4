"""PyTorch -> ONNX export: graph rewrites, the export stages, opset conversion, lint.

Submodules are imported on use (``segdeploy.export.lint`` must stay light):
``options`` (what an export is asked for), ``capture`` (accepted sizes, one torch.export capture),
``rewrites`` (graph-level rewrites), ``io`` (fused pre/post-processing), ``onnx`` (``build_onnx``:
capture -> rewrite -> translate -> post-process), ``opset`` (exact opset conversion), ``lint``
(TensorRT compatibility). Verifying and writing a checked file is ``segdeploy.pipeline.export_onnx``.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_onnx": "segdeploy.export.onnx",
    "OnnxModel": "segdeploy.export.onnx",
    "ExportOptions": "segdeploy.export.options",
    "ModelSpec": "segdeploy.export.options",
    "IOFormat": "segdeploy.export.options",
    "Calibration": "segdeploy.export.options",
    "apply_rewrites": "segdeploy.export.rewrites",
    "lint_onnx": "segdeploy.export.lint",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segdeploy.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
