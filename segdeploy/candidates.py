"""What a model argument of ``predict`` and ``eval`` names, and how frames run through it.

A candidate is an ONNX file (ONNX Runtime), a TensorRT plan (its sidecar names the ONNX that describes
it), a bundle directory (its manifest describes it; ONNX Runtime runs ``model.onnx``, TensorRT
``model.plan``) or ``pytorch``: the model the first file candidate was exported from, rebuilt from its
metadata (``rebuild_model``) and run in float32. ``CandidateSpec`` holds only paths and descriptions, so
a cluster worker opens its own runner from it; ``Segmenter`` turns decoded frames into class maps at the
frames' sizes through the candidate's ``FramePipeline``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.artifact import ColorOrder, Metadata, OutputKind, Precision, Runtime, parse_choice
from segdeploy.errors import UserInputError
from segdeploy.frames import FramePipeline

if TYPE_CHECKING:
    from segdeploy.runtime.base import Runner

PYTORCH = "pytorch"
"""The candidate name that stands for the PyTorch model the files were exported from."""


@dataclass(frozen=True)
class CandidateSpec:
    """One model to run, described by paths (picklable: every worker opens its own runner).

    Attributes:
        name: as the user wrote it; names the candidate in reports.
        runtime: ``torch``, ``ort`` or ``trt``.
        path: the file the runner opens (``.onnx`` or plan); for ``pytorch``, the ONNX whose metadata rebuilds it.
        pipeline: how frames become the runner's input and its output a class map.
        num_classes: the classes of the class maps (2 for a one-channel output).
        precision: the model's precision (``fp32`` for ``pytorch``).
        labels, colors: class names and RGB colors when the candidate carries them (a bundle).
        weights: ``pytorch`` only: a checkpoint overriding the one the metadata records.
        sidecar: a plan's facts when they come from a bundle manifest instead of a sidecar file.
    """

    name: str
    runtime: Runtime
    path: Path
    pipeline: FramePipeline
    num_classes: int
    precision: Precision = Precision.FP32
    labels: tuple[str, ...] | None = None
    colors: tuple[tuple[int, int, int], ...] | None = None
    weights: str | None = None
    sidecar: dict[str, Any] | None = None

    def open_runner(self, threads: int | None = None) -> Runner:
        """A runner for this candidate (not yet activated).

        Raises:
            UserInputError: unreadable files, or a ``pytorch`` model that cannot be rebuilt.
            MissingDependencyError: TensorRT asked for but absent.
        """
        from segdeploy.runtime import open_runner

        if self.runtime is Runtime.TORCH:
            from segdeploy.artifact import read_metadata
            from segdeploy.models.loading import rebuild_model

            loaded = rebuild_model(read_metadata(self.path), where=str(self.path), weights=self.weights)
            return open_runner(loaded.module, runtime=Runtime.TORCH, precision=Precision.FP32, threads=threads)
        runner = open_runner(self.path, runtime=self.runtime, precision=self.precision, threads=threads)
        if self.sidecar is not None:
            runner.sidecar = self.sidecar  # type: ignore[attr-defined]
        return runner

    def describe(self) -> dict[str, Any]:
        return {
            "candidate": self.name,
            "runtime": self.runtime.value,
            "precision": self.precision.value,
            "file": str(self.path),
        }


# --------------------------------------------------------------------------- resolving names
def resolve_candidates(
    names: Sequence[str], *, runtime: Runtime | str | None = None, weights: str | None = None
) -> list[CandidateSpec]:
    """The candidates the user named, in order (the first is the baseline of comparisons).

    Args:
        names: ONNX files, plans, bundle directories, or ``pytorch``.
        runtime: forces the runtime of file candidates (``trt`` picks a bundle's plan).
        weights: the ``pytorch`` candidate's checkpoint (default: what the metadata records).

    Raises:
        UserInputError: no names, a missing or unknown file, ``pytorch`` without a file candidate, or
            candidates whose class counts differ.
    """
    if not names:
        raise UserInputError("name at least one model: an ONNX file, a TensorRT plan or a bundle directory")
    chosen = parse_choice(Runtime, runtime, "engine") if runtime is not None else None
    specs: list[CandidateSpec | None] = []
    described: tuple[CandidateSpec, Path] | None = None  # the first file candidate and the ONNX describing it
    for name in names:
        if name.lower() == PYTORCH:
            specs.append(None)
            continue
        spec, onnx_path = _file_candidate(name, chosen)
        described = described or (spec, onnx_path)
        specs.append(spec)
    if described is None:
        raise UserInputError("`pytorch` is rebuilt from a file's metadata: name an ONNX file, plan or bundle too")
    base, onnx_path = described
    resolved = [s if s is not None else _pytorch_candidate(base, onnx_path, weights) for s in specs]
    counts = {s.num_classes for s in resolved}
    if len(counts) > 1:
        listing = ", ".join(f"{s.name}: {s.num_classes}" for s in resolved)
        raise UserInputError(f"the candidates predict different class counts ({listing})")
    return resolved


def _file_candidate(name: str, runtime: Runtime | None) -> tuple[CandidateSpec, Path]:
    from segdeploy.artifact import ENGINE_SUFFIXES, ONNX_SUFFIX, require_metadata

    path = Path(name)
    if not path.exists():
        raise UserInputError(f"model {path} does not exist: name an ONNX file, a TensorRT plan, a bundle or pytorch")
    if path.is_dir():
        return _bundle_candidate(path, name, runtime)
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if runtime not in (None, Runtime.TRT):
            raise UserInputError(f"{path} is a TensorRT plan: it runs on the trt engine, not {runtime.value}")
        if (path.parent / _bundle_files()["manifest"]).is_file() and path.name == _bundle_files()["plan"]:
            return _bundle_candidate(path.parent, name, Runtime.TRT)
        onnx_path = _engine_onnx(path)
        metadata = require_metadata(onnx_path)
        return _spec(name, Runtime.TRT, path, metadata, _engine_precision(path, metadata)), onnx_path
    if suffix != ONNX_SUFFIX:
        raise UserInputError(
            f"{path}: unknown model file type {path.suffix!r}; expected .onnx, .engine, .plan or a bundle"
        )
    if runtime is Runtime.TRT:
        raise UserInputError(f"{path} is an ONNX file: build a TensorRT engine from it first (segdeploy build)")
    metadata = require_metadata(path)
    if runtime is Runtime.TORCH:
        return _pytorch_candidate(_spec(name, Runtime.ORT, path, metadata), path, None, name=name), path
    return _spec(name, Runtime.ORT, path, metadata, metadata.precision), path


def _spec(
    name: str, runtime: Runtime, path: Path, metadata: Metadata, precision: Precision = Precision.FP32
) -> CandidateSpec:
    pipeline = FramePipeline.from_metadata(metadata)
    return CandidateSpec(name, runtime, path, pipeline, _classes(metadata.num_classes, path), precision)


def _classes(num_classes: int | None, where: Path) -> int:
    if not num_classes:
        raise UserInputError(f"{where} does not record its class count (num_classes): export it with segdeploy export")
    return max(int(num_classes), 2)  # a one-channel output still draws two classes


def _pytorch_candidate(base: CandidateSpec, onnx_path: Path, weights: str | None, name: str = PYTORCH) -> CandidateSpec:
    """The rebuilt PyTorch model: float32 NCHW in the network's own channel order, logits out, same run sizes."""
    pipeline = network_pipeline(base.pipeline)
    return dataclasses.replace(
        base, name=name, runtime=Runtime.TORCH, path=onnx_path, pipeline=pipeline, precision=Precision.FP32,
        weights=weights, sidecar=None,
    )  # fmt: skip


def network_pipeline(pipeline: FramePipeline) -> FramePipeline:
    """The pipeline of the network inside a file: what the file's fused steps did, done outside.

    A uint8 file converts its frames to float, flips BGR to RGB and normalizes inside the graph, so the
    network takes normalized RGB float32 NCHW; a float32 file's network takes what the file takes.
    """
    fields: dict[str, Any] = {"output": OutputKind.LOGITS, "fixed_batch": None}
    if pipeline.normalize_in_graph:
        flip = pipeline.color is ColorOrder.BGR and len(pipeline.mean) == 3
        fields.update(
            dtype="float32", layout="NCHW", normalize_in_graph=False, color=ColorOrder.RGB,
            mean=tuple(reversed(pipeline.mean)) if flip else pipeline.mean,
            std=tuple(reversed(pipeline.std)) if flip else pipeline.std,
        )  # fmt: skip
    return dataclasses.replace(pipeline, **fields)


def _engine_onnx(engine: Path) -> Path:
    """The ONNX an engine was built from, as its sidecar names it, unchanged since the build."""
    from segdeploy.fileio import sha256_file
    from segdeploy.runtime.sidecar import read_sidecar, sidecar_path

    sidecar = read_sidecar(engine)
    if sidecar is None:
        raise UserInputError(
            f"{engine} has no sidecar ({sidecar_path(engine).name}) naming its ONNX: segdeploy cannot tell how to "
            "feed it; bundle it (segdeploy bundle MODEL.onnx --engine PLAN) or rebuild it with segdeploy build"
        )
    info = sidecar.get("onnx") or {}
    recorded = Path(str(info.get("path", "")))
    for candidate in (recorded, engine.parent / recorded.name):
        if str(recorded) and candidate.is_file() and sha256_file(candidate) == info.get("sha256"):
            return candidate
    raise UserInputError(
        f"the ONNX {engine} was built from ({recorded}) is missing or changed since the build: it describes how "
        "to feed the engine; put it back, or bundle the pair (segdeploy bundle MODEL.onnx --engine PLAN)"
    )


def _engine_precision(engine: Path, metadata: Metadata) -> Precision:
    from segdeploy.artifact import parse_precision
    from segdeploy.runtime.sidecar import read_sidecar

    recorded = (read_sidecar(engine) or {}).get("precision")
    return parse_precision(recorded) if recorded else metadata.precision


# --------------------------------------------------------------------------- bundles
def _bundle_files() -> dict[str, str]:
    from segdeploy.bundle import manifest

    return {"manifest": manifest.MANIFEST, "onnx": manifest.MODEL, "plan": manifest.PLAN}


@dataclass(frozen=True)
class BundleModel:
    """What predict and eval read from a bundle: its pipeline, files, classes and colors."""

    root: Path
    pipeline: FramePipeline
    onnx: Path
    plan: Path | None
    num_classes: int
    precision: Precision
    labels: tuple[str, ...] | None
    colors: tuple[tuple[int, int, int], ...] | None
    engine: dict[str, Any] | None


def read_bundle(root: Path) -> BundleModel:
    """Read a bundle's manifest: the ``pipeline`` object when the manifest has one, else the pipeline of
    ``model.onnx``'s metadata (manifests before schema version 2 do not carry it).

    Raises:
        UserInputError: no manifest, an unreadable or malformed one, or a missing ``model.onnx``.
    """
    from segdeploy.artifact import parse_precision, require_metadata

    files = _bundle_files()
    path = root / files["manifest"]
    if not path.is_file():
        raise UserInputError(f"{root} is a directory but not a bundle: it has no {files['manifest']}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise UserInputError(f"{path} is not a segdeploy manifest (not a JSON object)")
    onnx = root / files["onnx"]
    if not onnx.is_file():
        raise UserInputError(f"bundle {root} has no {files['onnx']}")
    if isinstance(manifest.get("pipeline"), dict):
        pipeline = FramePipeline.from_dict(manifest["pipeline"])
    else:
        pipeline = FramePipeline.from_metadata(require_metadata(onnx))
    try:
        num_classes = int(manifest["num_classes"])
        labels = tuple(str(v) for v in manifest.get("labels") or ()) or None
        colors = tuple((int(r), int(g), int(b)) for r, g, b in manifest.get("palette") or ()) or None
        precision = parse_precision(manifest.get("precision") or "fp32")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserInputError(f"{path} is malformed: {exc!r}") from None
    engine = manifest.get("engine") if isinstance(manifest.get("engine"), dict) else None
    plan = root / files["plan"] if engine is not None and (root / files["plan"]).is_file() else None
    return BundleModel(root, pipeline, onnx, plan, num_classes, precision, labels, colors, engine)


def _bundle_candidate(root: Path, name: str, runtime: Runtime | None) -> tuple[CandidateSpec, Path]:
    bundle = read_bundle(root)
    classes = max(bundle.num_classes, 2)
    spec = CandidateSpec(
        name, Runtime.ORT, bundle.onnx, bundle.pipeline, classes, bundle.precision, bundle.labels, bundle.colors
    )
    if runtime is Runtime.TORCH:
        return _pytorch_candidate(spec, bundle.onnx, None, name=name), bundle.onnx
    if runtime is not Runtime.TRT:
        return spec, bundle.onnx
    if bundle.plan is None or bundle.engine is None:
        raise UserInputError(f"bundle {root} has no TensorRT plan: bundle it with --engine, or run it on ort")
    facts = {key: bundle.engine.get(key) for key in ("tensorrt_version", "gpu_name", "compute_capability")}
    layout = "nhwc" if bundle.pipeline.layout == "NHWC" else "nchw"
    facts["input_format"] = "float32-nchw" if bundle.pipeline.dtype == "float32" else f"uint8-{layout}"
    engine_precision = bundle.engine.get("precision") or bundle.precision.value
    from segdeploy.artifact import parse_precision

    return dataclasses.replace(
        spec, runtime=Runtime.TRT, path=bundle.plan, precision=parse_precision(engine_precision), sidecar=facts
    ), bundle.onnx


# --------------------------------------------------------------------------- running frames
class Segmenter:
    """Frames in, class maps at the frames' sizes out, through one candidate's runner and pipeline.

    Use as a context manager (the runner is active inside). Frames are 8-bit BGR (OpenCV's order) or grey.
    """

    def __init__(self, spec: CandidateSpec, threads: int | None = None) -> None:
        self.spec = spec
        self.pipeline = spec.pipeline
        self.runner = spec.open_runner(threads)

    def __enter__(self) -> Segmenter:
        self.runner.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.runner.deactivate()

    def segment(self, frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """One class map per frame (uint8 when the classes fit, else int32), frames of one size.

        Raises:
            UserInputError: frames of different sizes, or a runner that refuses the batch.
        """
        return self.classmaps(self.infer(frames), frames)

    def infer(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        """The model's outputs for frames of one size, with how many frames each holds.

        A file with a fixed batch gets batches of exactly that size (the last one padded with its last frame).
        """
        step = self.pipeline.fixed_batch or len(frames) or 1
        outputs = []
        for start in range(0, len(frames), step):
            group = list(frames[start : start + step])
            padded = group + [group[-1]] * (step - len(group))
            outputs.append((self.runner.infer(self.pipeline.to_input(padded, frame_color="bgr")), len(group)))
        return outputs

    def classmaps(self, outputs: list[tuple[np.ndarray, int]], frames: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The class maps of ``infer``'s outputs, each back at its frame's size."""
        maps: list[np.ndarray] = []
        for output, count in outputs:
            for classmap in self.pipeline.to_classmap(output)[:count]:
                size = frames[len(maps)].shape[:2]
                maps.append(self.pipeline.restore(_compact(classmap, self.spec.num_classes), size))
        return maps


def _compact(classmap: np.ndarray, num_classes: int) -> np.ndarray:
    """A class map in the smallest type that holds the classes (uint8 resizes and compares fastest)."""
    if num_classes <= 256:
        return classmap.astype(np.uint8)
    return classmap.astype(np.int32, copy=False)
