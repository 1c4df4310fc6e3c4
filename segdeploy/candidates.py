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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.artifact import ColorOrder, Metadata, OutputKind, Precision, Runtime, parse_choice
from segdeploy.errors import UserInputError
from segdeploy.frames import FramePipeline

if TYPE_CHECKING:
    from segdeploy.bundle.manifest import BundleManifest
    from segdeploy.runtime.base import Runner
    from segdeploy.runtime.sidecar import EngineLoadFacts, EngineSidecar

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
        engine_facts: a plan's facts when they come from a bundle manifest instead of a sidecar file.
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
    engine_facts: EngineLoadFacts | None = None

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
        if self.engine_facts is not None:
            from segdeploy.runtime.trt_runner import TrtRunner

            return TrtRunner(self.path, precision=self.precision, facts=self.engine_facts)
        return open_runner(self.path, runtime=self.runtime, precision=self.precision, threads=threads)

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
    from segdeploy.bundle.manifest import MANIFEST, PLAN

    path = Path(name)
    if not path.exists():
        raise UserInputError(f"model {path} does not exist: name an ONNX file, a TensorRT plan, a bundle or pytorch")
    if path.is_dir():
        return _bundle_candidate(path, name, runtime)
    suffix = path.suffix.lower()
    if suffix in ENGINE_SUFFIXES:
        if runtime not in (None, Runtime.TRT):
            raise UserInputError(f"{path} is a TensorRT plan: it runs on the trt engine, not {runtime.value}")
        if (path.parent / MANIFEST).is_file() and path.name == PLAN:
            return _bundle_candidate(path.parent, name, Runtime.TRT)
        sidecar = _engine_sidecar(path)
        onnx_path = _engine_onnx(path, sidecar)
        return _spec(name, Runtime.TRT, path, require_metadata(onnx_path), sidecar.precision), onnx_path
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
        weights=weights, engine_facts=None,
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


def _engine_sidecar(engine: Path) -> EngineSidecar:
    """An engine's sidecar; a plan without one cannot be fed (nothing names its ONNX).

    Raises:
        UserInputError: no sidecar, or one that is not a complete segdeploy sidecar.
    """
    from segdeploy.runtime.sidecar import EngineSidecar, sidecar_path

    sidecar = EngineSidecar.read(engine)
    if sidecar is None:
        raise UserInputError(
            f"{engine} has no sidecar ({sidecar_path(engine).name}) naming its ONNX: segdeploy cannot tell how to "
            "feed it; bundle it (segdeploy bundle MODEL.onnx --engine PLAN) or rebuild it with segdeploy build"
        )
    return sidecar


def _engine_onnx(engine: Path, sidecar: EngineSidecar) -> Path:
    """The ONNX an engine was built from, as its sidecar names it (or beside the engine), unchanged since the build."""
    from segdeploy.fileio import sha256_file

    recorded = Path(sidecar.onnx_path)
    for candidate in (recorded, engine.parent / recorded.name):
        if candidate.is_file() and sha256_file(candidate) == sidecar.onnx_sha256:
            return candidate
    raise UserInputError(
        f"the ONNX {engine} was built from ({recorded}) is missing or changed since the build: it describes how "
        "to feed the engine; put it back, or bundle the pair (segdeploy bundle MODEL.onnx --engine PLAN)"
    )


# --------------------------------------------------------------------------- bundles
@dataclass(frozen=True)
class BundleModel:
    """A bundle as predict and eval run it: its manifest and the files the runners open.

    Attributes:
        root: the bundle directory.
        manifest: its ``segdeploy.json``.
        onnx: its ``model.onnx``.
        plan: its ``model.plan`` when the manifest describes an engine and the file is there.
    """

    root: Path
    manifest: BundleManifest
    onnx: Path
    plan: Path | None


def read_bundle(root: Path) -> BundleModel:
    """Read a bundle's manifest (``BundleManifest.read``) and find the files it runs.

    Raises:
        UserInputError: no manifest, an unreadable or malformed one (naming the field), or a missing ``model.onnx``.
    """
    from segdeploy.bundle.manifest import MANIFEST, MODEL, PLAN, BundleManifest

    if not (root / MANIFEST).is_file():
        raise UserInputError(f"{root} is a directory but not a bundle: it has no {MANIFEST}")
    try:
        manifest = BundleManifest.read(root)
    except UserInputError as exc:
        raise UserInputError(f"bundle {root}: {exc}") from None
    onnx = root / MODEL
    if not onnx.is_file():
        raise UserInputError(f"bundle {root} has no {MODEL}")
    plan = root / PLAN if manifest.engine is not None and (root / PLAN).is_file() else None
    return BundleModel(root, manifest, onnx, plan)


def _bundle_candidate(root: Path, name: str, runtime: Runtime | None) -> tuple[CandidateSpec, Path]:
    from segdeploy.runtime.sidecar import EngineLoadFacts

    bundle = read_bundle(root)
    manifest = bundle.manifest
    spec = CandidateSpec(
        name, Runtime.ORT, bundle.onnx, manifest.pipeline, max(manifest.num_classes, 2), manifest.precision,
        manifest.labels or None, manifest.palette or None,
    )  # fmt: skip
    if runtime is Runtime.TORCH:
        return _pytorch_candidate(spec, bundle.onnx, None, name=name), bundle.onnx
    if runtime is not Runtime.TRT:
        return spec, bundle.onnx
    engine = manifest.engine
    if bundle.plan is None or engine is None:
        raise UserInputError(f"bundle {root} has no TensorRT plan: bundle it with --engine, or run it on ort")
    facts = EngineLoadFacts(
        engine.tensorrt_version, engine.gpu_name, engine.compute_capability, engine.precision,
        manifest.input.input_format,
    )  # fmt: skip
    return dataclasses.replace(
        spec, runtime=Runtime.TRT, path=bundle.plan, precision=engine.precision, engine_facts=facts
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
