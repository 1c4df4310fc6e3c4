"""Deployment bundles: one directory with the model, its contract and the files each consumer loads.

``write_bundle`` writes it (``segdeploy bundle MODEL.onnx -o DIR``), ``check_bundle`` proves it
consistent without a server or GPU (``segdeploy bundle --check DIR``). The manifest: ``manifest``
(``BundleManifest``); names and files: ``layout``; output locations: ``target``; plans: ``engine``; the
golden pair: ``golden``; Triton: ``triton`` and ``triton_client`` (the bundle's ``client.py``); DeepStream:
``deepstream`` and ``nvinfer``. NumPy and the submodules' own imports load lazily, so ``import
segdeploy.bundle`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segdeploy.bundle.check import BundleCheck, check_bundle
    from segdeploy.bundle.write import write_bundle

__all__ = ["BundleCheck", "check_bundle", "write_bundle"]

_LAZY = {
    "write_bundle": "segdeploy.bundle.write",
    "check_bundle": "segdeploy.bundle.check",
    "BundleCheck": "segdeploy.bundle.check",
}


def __getattr__(name: str) -> Any:
    import importlib

    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'segdeploy.bundle' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
