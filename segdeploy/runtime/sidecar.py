"""The JSON file beside an engine (``model.engine.json``): what built it, for which GPU, from which ONNX.

An engine deserializes only on the TensorRT version and GPU architecture that built it; the
runner reads the sidecar to refuse a foreign engine in one line, the bundle to describe it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from segdeploy.errors import UserInputError

SIDECAR_SUFFIX = ".json"
"""An engine ``model.engine`` is described by ``model.engine.json`` (``segdeploy build`` writes both)."""


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """Read ``ENGINE.json`` if present.

    Raises:
        UserInputError: the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}; delete it or rebuild the engine") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not a segdeploy engine sidecar; delete it or rebuild the engine")
    return data
