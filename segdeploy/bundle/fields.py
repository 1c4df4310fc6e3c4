"""Typed reading of the JSON objects of a bundle's manifest, with messages that name the field."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import PurePosixPath
from typing import Any

from segdeploy.artifact import parse_choice
from segdeploy.errors import UserInputError

MANIFEST = "segdeploy.json"


class ManifestError(UserInputError):
    """A ``segdeploy.json`` that does not fit the schema (the message names the field)."""


class Fields:
    """Typed access to one JSON object of the manifest, with messages naming the field's path."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ManifestError(
                f"{MANIFEST}: {'object ' + repr(path.rstrip('.')) if path else 'it'} is not a JSON object"
            )
        self.data, self.path = data, path

    def error(self, key: str, what: str) -> ManifestError:
        return ManifestError(f"{MANIFEST}: '{self.path}{key}' {what}")

    def get(self, key: str, kind: type) -> Any:
        value = self.data.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"is missing or not a {'JSON object' if kind is dict else kind.__name__}")
        return value

    def optional(self, key: str, kind: type) -> Any:
        if key not in self.data:
            raise self.error(key, "is missing (null when it does not apply)")
        return None if self.data[key] is None else self.get(key, kind)

    def section(self, key: str) -> Fields:
        return Fields(self.get(key, dict), f"{self.path}{key}.")

    def choice(self, key: str, enum: type[Enum]) -> Any:
        value = self.get(key, str)
        try:
            return parse_choice(enum, value, "value")
        except UserInputError:
            raise self.error(key, f"is {value!r}: one of {', '.join(m.value for m in enum)}") from None


def inside(path: str) -> bool:
    """Whether a manifest path is relative, '/'-separated and stays inside the bundle."""
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts and "\\" not in path


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
