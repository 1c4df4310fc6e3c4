"""JSON Schemas of the files segdeploy writes for other programs: ``manifest.schema.json`` (a bundle's
``segdeploy.json``) and ``engine_sidecar.schema.json`` (the ``ENGINE.json`` beside a TensorRT plan).

The Python readers (``BundleManifest.read``, ``EngineSidecar.read``) enforce the same rules; the schemas
let other languages (the C++ runtime's tests) validate what they read.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

MANIFEST_SCHEMA = "manifest.schema.json"
ENGINE_SIDECAR_SCHEMA = "engine_sidecar.schema.json"


def load_schema(name: str) -> dict[str, Any]:
    """One of the schemas above, parsed."""
    return json.loads(resources.files(__name__).joinpath(name).read_text(encoding="utf-8"))
