"""segdeploy: semantic-segmentation networks from PyTorch to ONNX and TensorRT.

The public API is imported lazily so that ``import segdeploy`` and
``segdeploy --help`` stay instant and never import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from segdeploy._version import __version__

# public name -> module that defines it
_LAZY = {
    "list_models": "segdeploy.models",
    "create_model": "segdeploy.models",
    "model_info": "segdeploy.models",
    "register_model": "segdeploy.models",
    "load_model": "segdeploy.models.loading",
    "load_checkpoint": "segdeploy.checkpoints",
    "load_weights": "segdeploy.checkpoints",
    "export_onnx": "segdeploy.pipeline",
    "ExportResult": "segdeploy.pipeline",
    "ExportVerificationError": "segdeploy.pipeline",
    "ModelSpec": "segdeploy.export.options",
    "IOFormat": "segdeploy.export.options",
    "Calibration": "segdeploy.export.options",
    "lint_onnx": "segdeploy.export.lint",
    "verify": "segdeploy.verify",
    "build_engine": "segdeploy.runtime.trt_build",
    "benchmark": "segdeploy.bench",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segdeploy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
