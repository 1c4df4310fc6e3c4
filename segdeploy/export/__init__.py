"""PyTorch -> ONNX export: graph rewrites, the export pipeline, opset conversion, lint.

Submodules are imported on use (``segdeploy.export.lint`` must stay light):
``capture`` (accepted sizes, one torch.export capture), ``rewrites`` (graph-level rewrites),
``io`` (fused pre/post-processing), ``onnx`` (``export_onnx``), ``opset`` (exact opset
conversion), ``lint`` (TensorRT compatibility).
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_onnx": "segdeploy.export.onnx",
    "ExportResult": "segdeploy.export.onnx",
    "apply_rewrites": "segdeploy.export.rewrites",
    "lint_onnx": "segdeploy.export.lint",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segdeploy.export' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
