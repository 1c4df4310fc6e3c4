"""The JSON file beside an engine (``model.engine.json``): what built it, for which GPU, from which ONNX.

An engine deserializes only on the TensorRT version and GPU architecture that built it; the runner
reads the sidecar to refuse a foreign engine in one line, the bundle to describe it and to prove that
the plan is the one built from its ONNX. :class:`EngineSidecar` is the contract: ``EngineSidecar.read``
is its one reader, ``EngineSidecar.write`` its one writer, and ``segdeploy/schemas/
engine_sidecar.schema.json`` its JSON Schema. :class:`EngineLoadFacts` is the part the runner checks and
feeds by, whether a sidecar or a bundle's manifest gives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segdeploy.artifact import InputFormat, Precision, parse_choice
from segdeploy.errors import UserInputError

SIDECAR_SUFFIX = ".json"
"""An engine ``model.engine`` is described by ``model.engine.json`` (``segdeploy build`` writes both)."""
SIDECAR_FORMAT = 1


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


@dataclass(frozen=True)
class ProfileShapes:
    """An optimization profile in the layout of the ONNX input: TensorRT runs ``min <= shape <= max``."""

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class EngineLoadFacts:
    """Where an engine loads and what it takes: what the TensorRT runner checks before deserializing it.

    Attributes:
        tensorrt_version, gpu_name, compute_capability: the TensorRT version and GPU that built it.
        precision: the engine's precision (the runner's label and verification thresholds).
        input_format: the input its ONNX takes (the runner's input layout).
        engine_sha256: the plan bytes' sha256 when a sidecar records it; None when the facts come from a
            bundle's manifest (whose ``files`` hash the plan instead).
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision
    input_format: InputFormat
    engine_sha256: str | None = None


@dataclass(frozen=True)
class EngineSidecar:
    """What ``segdeploy build`` knows about an engine it wrote.

    Attributes:
        tensorrt_version, gpu_name, compute_capability: where the plan loads (the exact version, the GPU's
            ``major.minor``).
        precision: the engine's precision.
        strongly_typed, fp16_builder_flag, explicit_quantization, tf32: how it was typed and flagged.
        input_name, input_format: the input tensor it takes.
        profile: its optimization profile, in the input's layout.
        onnx_path, onnx_sha256: the ONNX file it was built from, as given, and that file's sha256.
        engine_sha256: the plan bytes' sha256.
        workspace_gb, timing_cache, build_seconds, built_at: how the build ran.
        segdeploy_version: the writer's version.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Precision
    input_name: str
    input_format: InputFormat
    profile: ProfileShapes
    onnx_path: str
    onnx_sha256: str
    engine_sha256: str
    strongly_typed: bool
    fp16_builder_flag: bool
    explicit_quantization: bool
    tf32: bool
    workspace_gb: float
    timing_cache: str | None
    build_seconds: float
    built_at: str
    segdeploy_version: str

    def load_facts(self) -> EngineLoadFacts:
        """What the runner checks before loading this engine, and the input it feeds."""
        return EngineLoadFacts(
            self.tensorrt_version,
            self.gpu_name,
            self.compute_capability,
            self.precision,
            self.input_format,
            self.engine_sha256,
        )

    # ------------------------------------------------------------------ the one writer
    def to_dict(self) -> dict[str, Any]:
        """The JSON object (key names and layout are the file format)."""
        return {
            "format": SIDECAR_FORMAT,
            "segdeploy_version": self.segdeploy_version,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision.value,
            "strongly_typed": self.strongly_typed,
            "fp16_builder_flag": self.fp16_builder_flag,
            "explicit_quantization": self.explicit_quantization,
            "tf32": self.tf32,
            "input_name": self.input_name,
            "input_format": self.input_format.value,
            "profile": self.profile.to_dict(),
            "onnx": {"path": self.onnx_path, "sha256": self.onnx_sha256},
            "engine_sha256": self.engine_sha256,
            "workspace_gb": self.workspace_gb,
            "timing_cache": self.timing_cache,
            "build_seconds": self.build_seconds,
            "built_at": self.built_at,
        }

    def write(self, engine_path: str | Path) -> Path:
        """Write ``ENGINE.json`` atomically; returns its path."""
        from segdeploy.fileio import write_text_atomic

        return write_text_atomic(sidecar_path(engine_path), json.dumps(self.to_dict(), indent=2) + "\n")

    # ------------------------------------------------------------------ the one reader
    @classmethod
    def read(cls, engine_path: str | Path) -> EngineSidecar | None:
        """The sidecar of ``engine_path``, or None when there is none.

        Raises:
            UserInputError: an unreadable sidecar, or one that is not a complete segdeploy sidecar (naming
                what is wrong).
        """
        path = sidecar_path(engine_path)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserInputError(f"cannot read {path}: {exc}; delete it or rebuild the engine") from None
        return cls.from_dict(data, where=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "the sidecar") -> EngineSidecar:
        """Parse the JSON object, strictly.

        Raises:
            UserInputError: a missing key or a value of the wrong type or out of range.
        """
        hint = "; rebuild the engine with `segdeploy build`"

        def bad(key: str, what: str) -> UserInputError:
            return UserInputError(f"{where} is not a segdeploy engine sidecar: '{key}' {what}{hint}")

        if not isinstance(data, dict):
            raise UserInputError(f"{where} is not a segdeploy engine sidecar (not a JSON object){hint}")
        if data.get("format") != SIDECAR_FORMAT:
            raise bad("format", f"is {data.get('format')!r}, this segdeploy reads {SIDECAR_FORMAT}")

        def get(key: str, kind: type | tuple[type, ...], source: dict[str, Any] = data, path: str = "") -> Any:
            value = source.get(key)
            if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
                name = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
                raise bad(path + key, f"is missing or not a {name}")
            return value

        def text(key: str, source: dict[str, Any] = data, path: str = "") -> str:
            value = get(key, str, source, path)
            if not value.strip():
                raise bad(path + key, "is empty")
            return value

        def sha(key: str, source: dict[str, Any] = data, path: str = "") -> str:
            value = text(key, source, path)
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
                raise bad(path + key, "is not a sha256 (64 lowercase hex digits)")
            return value

        profile = get("profile", dict)
        shapes = []
        for key in ("min", "opt", "max"):
            dims = profile.get(key)
            if (
                not isinstance(dims, list)
                or len(dims) != 4
                or any(not isinstance(d, int) or isinstance(d, bool) or d < 1 for d in dims)
            ):
                raise bad(f"profile.{key}", "is missing or not 4 positive integers")
            shapes.append(tuple(dims))
        if any(not a <= b <= c for a, b, c in zip(*shapes)):
            raise bad("profile", "does not satisfy min <= opt <= max")
        onnx = get("onnx", dict)
        cache = data.get("timing_cache")
        if cache is not None and not isinstance(cache, str):
            raise bad("timing_cache", "is not a string or null")
        try:
            precision = parse_choice(Precision, text("precision"), "precision")
            input_format = parse_choice(InputFormat, text("input_format"), "input format")
        except UserInputError as exc:
            raise UserInputError(f"{where}: {exc}{hint}") from None
        return cls(
            tensorrt_version=text("tensorrt_version"),
            gpu_name=text("gpu_name"),
            compute_capability=text("compute_capability"),
            precision=precision,
            input_name=text("input_name"),
            input_format=input_format,
            profile=ProfileShapes(*shapes),
            onnx_path=text("path", onnx, "onnx."),
            onnx_sha256=sha("sha256", onnx, "onnx."),
            engine_sha256=sha("engine_sha256"),
            strongly_typed=get("strongly_typed", bool),
            fp16_builder_flag=get("fp16_builder_flag", bool),
            explicit_quantization=get("explicit_quantization", bool),
            tf32=get("tf32", bool),
            workspace_gb=float(get("workspace_gb", (int, float))),
            timing_cache=cache,
            build_seconds=float(get("build_seconds", (int, float))),
            built_at=get("built_at", str),
            segdeploy_version=text("segdeploy_version"),
        )
