"""``check_bundle``: everything about a bundle that can be proven without a server or a GPU.

In order: the manifest against its schema; the files against their sha256 (none missing, none extra, only
regular files: no link or device survives a copy); the model's metadata and graph against the manifest;
the golden pair through the manifest's frame pipeline and ONNX Runtime; each Triton config with Triton's own
schema and load-time rules against the ONNX; the DeepStream config as a GLib key file against the model,
and nvinfer simulated on the golden frames, which must give the model's own class map. Every check runs;
the first problem found is the one a one-line error names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.artifact import OutputKind, load_onnx, require_metadata
from segdeploy.bundle import deepstream, nvinfer, triton
from segdeploy.bundle.golden import compare_golden
from segdeploy.bundle.layout import walk
from segdeploy.bundle.manifest import (
    LABELS,
    MANIFEST,
    MODEL,
    SCHEMA_VERSION,
    TRITON_DIR,
    BundleManifest,
    DeepStreamMode,
    OutputSpec,
    Provenance,
)
from segdeploy.bundle.tensors import TensorInfo, check_graph, graph_io
from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError, VerificationError
from segdeploy.frames import FramePipeline


@dataclass
class CheckResult:
    """One check: ``ok``, ``failed`` or ``skipped``, what it covered, and the problems it found."""

    name: str
    status: str
    detail: str = ""
    problems: list[str] = field(default_factory=list)


@dataclass
class BundleCheck:
    """All checks of one bundle."""

    path: Path
    results: list[CheckResult] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [problem for result in self.results for problem in result.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def skipped(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "skipped"]

    def raise_for_problems(self) -> None:
        """Raises: VerificationError naming the first problem (and how many more there are)."""
        problems = self.problems
        if problems:
            rest = len(problems) - 1
            more = f" (and {rest} more problem{'s' if rest > 1 else ''})" if rest else ""
            raise VerificationError(f"bundle {self.path}: {problems[0]}{more}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ok": self.ok,
            "checks": [
                {"name": r.name, "status": r.status, "detail": r.detail, "problems": r.problems} for r in self.results
            ],
        }


@dataclass
class _Model:
    """The bundle's ONNX as the checks need it."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    pipeline: FramePipeline


def check_bundle(bundle_dir: str | os.PathLike[str]) -> BundleCheck:
    """Check a bundle written by ``write_bundle`` (or by hand to the same schema).

    Returns:
        The :class:`BundleCheck`; call ``raise_for_problems()`` to turn problems into a VerificationError.

    Raises:
        UserInputError: ``bundle_dir`` is not a directory or has no ``segdeploy.json``.
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise UserInputError(f"bundle directory {root} does not exist")
    if not (root / MANIFEST).exists() and not (root / MANIFEST).is_symlink():
        raise UserInputError(f"{root} has no {MANIFEST}: not a segdeploy bundle")
    report = BundleCheck(root)
    result = CheckResult("manifest", "ok", f"{MANIFEST}, schema version {SCHEMA_VERSION}")
    report.results.append(result)
    if (root / MANIFEST).is_symlink() or not (root / MANIFEST).is_file():
        _failed(result, f"{MANIFEST} is not a regular file (a link or special file does not travel with the bundle)")
        return report
    try:
        manifest = BundleManifest.read(root)
    except UserInputError as exc:
        _failed(result, str(exc))
        return report
    report.results.append(_check_files(root, manifest))
    model, model_result = _check_model(root, manifest)
    report.results.append(model_result)
    report.results.append(_check_golden(root, manifest))
    report.results += _check_triton(root, manifest, model)
    report.results.append(_check_deepstream(root, manifest, model))
    return report


# --------------------------------------------------------------------------- files
def _check_files(root: Path, manifest: BundleManifest) -> CheckResult:
    from segdeploy.fileio import sha256_file

    listed = manifest.files
    result = CheckResult("files", "ok", f"{len(listed)} regular files, sha256")
    regular, others = walk(root)
    for path in others:
        _failed(result, f"{path} is a link or special file, not a regular file: it does not travel with the bundle")
    present = set(regular)
    for path, digest in listed.items():
        if path not in present:
            _failed(result, f"{path} is listed in the manifest but missing")
        elif sha256_file(root / path) != digest:
            _failed(result, f"{path} differs from the manifest's sha256 (changed after bundling)")
    generated = _generated_engine(root, manifest)
    tolerated = {generated, f"{generated}.json"} if generated else set()  # the engine and its build sidecar
    for path in sorted(present - set(listed) - {MANIFEST}):
        if path in tolerated:
            result.detail += f"; {path}: nvinfer's engine (allowed)"
            continue
        _failed(result, f"{path} is in the bundle but not in the manifest")
    required = [MODEL, LABELS, manifest.golden.input, manifest.golden.output, manifest.golden.frames]
    required += [manifest.deepstream.config] + ([manifest.deepstream.onnx] if manifest.deepstream.onnx else [])
    required += [manifest.engine.file] if manifest.engine else []
    for path in required:
        if path not in listed:
            _failed(result, f"{path} is not listed in the manifest")
    return result


def _generated_engine(root: Path, manifest: BundleManifest) -> str | None:
    """The engine file nvinfer writes into the bundle for its config (a bundle path), if the config reads."""
    try:
        text = (root / manifest.deepstream.config).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    values, problems = deepstream.read_config(text)
    return None if problems or not values else deepstream.expected_engine(values, manifest)


# --------------------------------------------------------------------------- the model against the manifest
def _check_model(root: Path, manifest: BundleManifest) -> tuple[_Model | None, CheckResult]:
    from segdeploy.fileio import sha256_file

    result = CheckResult("model", "ok", f"{MODEL} metadata and graph, pipeline, provenance, {LABELS}")
    try:
        model = load_onnx(root / MODEL)
        metadata = require_metadata(model, where=MODEL)
        inputs, outputs = graph_io(model)
        check_graph(Path(MODEL), metadata, inputs, outputs)
        pipeline = FramePipeline.from_metadata(metadata)
    except UserInputError as exc:
        return None, _failed(result, str(exc))
    spec = BundleManifest.input_of(metadata, manifest.input.tensorrt_profile)
    for key in spec.__dataclass_fields__:
        got, want = getattr(manifest.input, key), getattr(spec, key)
        if got != want:
            _failed(result, f"{MANIFEST}: input.{key} is {_show(got)}, {MODEL} says {_show(want)}")
    if manifest.output != OutputSpec(metadata.output):
        got, want = manifest.output.kind.value, metadata.output.value
        _failed(result, f"{MANIFEST}: output.kind is {got!r}, {MODEL} says {want!r}")
    facts = {"num_classes": metadata.num_classes, "precision": metadata.precision, "opset": metadata.opset}
    for key, want in facts.items():
        if getattr(manifest, key) != want:
            _failed(result, f"{MANIFEST}: {key} is {_show(getattr(manifest, key))}, {MODEL} says {_show(want)}")
    if manifest.pipeline != pipeline:
        differing = [k for k, v in pipeline.to_dict().items() if manifest.pipeline.to_dict().get(k) != v]
        _failed(result, f"{MANIFEST}: pipeline.{differing[0] if differing else '?'} is not what {MODEL} describes")
    expected = Provenance.of(
        metadata,
        model_sha256=sha256_file(root / MODEL),
        ir_version=model.ir_version,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
    )
    for key in expected.__dataclass_fields__:
        if key != "onnx_version" and getattr(manifest.provenance, key) != getattr(expected, key):
            _failed(result, f"{MANIFEST}: provenance.{key} is not what {MODEL} says ({_show(getattr(expected, key))})")
    labels_file = root / LABELS
    if labels_file.is_file():
        lines = labels_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines != list(manifest.labels):
            _failed(result, f"{LABELS} ({len(lines)} lines) is not the manifest's labels ({len(manifest.labels)})")
    if manifest.engine is not None and manifest.input.tensorrt_profile is None:
        _failed(result, f"{MANIFEST}: an engine but no input.tensorrt_profile")
    if manifest.engine is None and manifest.input.tensorrt_profile is not None:
        _failed(result, f"{MANIFEST}: input.tensorrt_profile without an engine")
    return _Model(inputs, outputs, pipeline), result


# --------------------------------------------------------------------------- golden pair
def _check_golden(root: Path, manifest: BundleManifest) -> CheckResult:
    golden = manifest.golden
    result = CheckResult("golden", "ok", "the pipeline makes the golden input of its frames, ONNX Runtime its output")
    arrays = {}
    for key in ("frames", "input", "output"):
        path = getattr(golden, key)
        try:
            arrays[key] = np.load(root / path, allow_pickle=False)
        except FileNotFoundError:
            return _failed(result, f"{path} is missing")
        except (OSError, ValueError) as exc:
            return _failed(result, f"{path} is not a readable .npy file ({exc})")
    frames, x, expected = arrays["frames"], arrays["input"], arrays["output"]
    spec = manifest.input
    if x.dtype.name != spec.dtype or x.ndim != 4:
        return _failed(result, f"{golden.input} is {x.dtype} of rank {x.ndim}, the input is {spec.dtype} {spec.layout}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != spec.channels:
        return _failed(result, f"{golden.frames} is not N x H x W x {spec.channels} uint8 frames")
    try:
        made = manifest.pipeline.to_input(list(frames), frame_color="rgb")
    except SegdeployError as exc:
        return _failed(result, f"the manifest's pipeline cannot prepare {golden.frames}: {exc}")
    if made.shape != x.shape or not np.array_equal(made, x):
        return _failed(result, f"{golden.input} is not what the manifest's pipeline makes of {golden.frames}")
    try:
        output = _run(root / MODEL, x, manifest)
    except SegdeployError as exc:
        return _failed(result, f"ONNX Runtime cannot run {golden.input}: {exc}")
    difference = compare_golden(output, expected, manifest.output.kind)
    if difference is not None:
        return _failed(result, f"ONNX Runtime does not reproduce {golden.output}: {difference}")
    result.detail += f" ({'x'.join(map(str, x.shape))} {x.dtype})"
    return result


def _run(path: Path, x: np.ndarray, manifest: BundleManifest, output: int = 0) -> np.ndarray:
    """One ONNX Runtime run; any failure of the runtime is a SegdeployError naming it."""
    from segdeploy.runtime.ort_runner import OrtRunner

    try:
        if output == 0 and path.name == MODEL:
            with OrtRunner(path, precision=manifest.precision, threads=1) as runner:
                return runner.infer(x)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[output]
    except SegdeployError:
        raise
    except Exception as exc:  # ONNX Runtime raises its own types for a corrupt model or a bad input
        raise SegdeployError(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


# --------------------------------------------------------------------------- Triton
def _check_triton(root: Path, manifest: BundleManifest, model: _Model | None) -> list[CheckResult]:
    expected = triton.model_dirs(manifest.name, manifest.engine is not None)
    base = root / TRITON_DIR
    present = {p.name for p in base.iterdir() if p.is_dir() and not p.is_symlink()} if base.is_dir() else set()
    results = []
    if manifest.triton != expected:
        results.append(CheckResult("triton", "failed", "", [f"{MANIFEST}: triton.models is not {expected}"]))
    for extra in sorted(present - set(expected)):
        results.append(
            CheckResult(
                f"triton {extra}",
                "failed",
                "",
                [f"triton/{extra} is not a model of this bundle ({', '.join(expected)})"],
            )
        )
    classes_axis = None if manifest.output.kind is OutputKind.CLASSMAP else 1
    for name, kind in expected.items():
        result = CheckResult(f"triton {name}", "ok", f"triton/{name}/config.pbtxt against Triton's ModelConfig")
        results.append(result)
        source = MODEL if kind is triton.TritonKind.ONNX else manifest.engine.file  # type: ignore[union-attr]
        copy = f"triton/{name}/{triton.VERSION}/model.{kind.value}"
        if manifest.files.get(copy) is None or manifest.files.get(copy) != manifest.files.get(source):
            _failed(result, f"{copy} is not the bundle's {source}")
        if model is None:
            result.status, result.detail = "skipped", f"{MODEL} did not load"
            continue
        try:
            problems = triton.check_model(
                base / name,
                kind,
                model.inputs,
                model.outputs,
                spec=manifest.input,
                num_classes=manifest.num_classes,
                classes_axis=classes_axis,
            )
        except MissingDependencyError as exc:
            if result.status == "ok":
                result.status = "skipped"
            result.detail = f"config not parsed: {exc}"
            continue
        for problem in problems:
            _failed(result, problem)
    return results


# --------------------------------------------------------------------------- DeepStream
def _check_deepstream(root: Path, manifest: BundleManifest, model: _Model | None) -> CheckResult:
    where = manifest.deepstream.config
    result = CheckResult("deepstream", "ok", f"{where} against the model; nvinfer simulated on the golden frames")
    expected_mode = DeepStreamMode.DIRECT if deepstream.direct_fit(manifest) else DeepStreamMode.DERIVED
    if manifest.deepstream.mode is not expected_mode:
        mode = manifest.deepstream.mode.value
        return _failed(result, f"{MANIFEST}: deepstream.mode is {mode}, expected {expected_mode.value}")
    try:
        text = (root / where).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return _failed(result, f"{where} is missing or unreadable")
    values, problems = deepstream.read_config(text)
    if problems:
        for problem in problems:
            _failed(result, f"{where} {problem}" if problem.startswith(("is not", "has no")) else f"{where}: {problem}")
        return result
    if model is None:
        result.status, result.detail = "skipped", f"{MODEL} did not load"
        return result
    onnx_file = deepstream.resolve(values.get("onnx-file", ""))
    outputs = model.outputs if onnx_file == MODEL else []
    if onnx_file is not None and onnx_file != MODEL and (root / onnx_file).is_file():
        try:
            outputs = graph_io(load_onnx(root / onnx_file))[1]
        except UserInputError as exc:
            return _failed(result, f"{onnx_file}: {exc}")
    regular = set(walk(root)[0])
    for problem in deepstream.check_config(values, manifest, [t.name for t in outputs], regular):
        _failed(result, f"{where}: {problem}")
    if result.problems:
        return result
    try:
        frames = np.load(root / manifest.golden.frames, allow_pickle=False)
        golden = np.load(root / manifest.golden.output, allow_pickle=False)
        reference = manifest.pipeline.to_classmap(golden)
    except (OSError, ValueError, SegdeployError):
        result.status, result.detail = "skipped", "nvinfer not simulated: the golden pair does not load"
        return result
    problem = _simulate(root, manifest, values, onnx_file, frames, golden, reference)  # type: ignore[arg-type]
    if problem:
        _failed(result, problem)
    return result


def _simulate(
    root: Path,
    manifest: BundleManifest,
    values: dict[str, Any],
    onnx_file: str,
    frames: np.ndarray,
    golden: np.ndarray,
    reference: np.ndarray,
) -> str | None:
    """nvinfer on the golden frames must give the model's own class map (the golden output's)."""
    try:
        got, scores = nvinfer.simulate(
            frames,
            color_format=values["model-color-format"],
            scale=values["net-scale-factor"],
            offsets=values["offsets"],
            run=lambda x: _run(root / onnx_file, x.astype(np.float32), manifest, output=0),
            cut=values["segmentation-threshold"],
        )
    except SegdeployError as exc:
        return f"nvinfer simulated: {onnx_file} does not run on the golden frames: {exc}"
    derived = manifest.deepstream.mode is DeepStreamMode.DERIVED
    want = nvinfer.expected_scores(golden, manifest.output.kind, manifest.num_classes, derived)
    where = f"nvinfer simulated on {manifest.golden.frames}"
    if scores.shape != want.shape:
        return f"{where}: scores {scores.shape}, expected {want.shape}"
    difference = compare_golden(scores, want, OutputKind.PROBS)
    if difference is not None:  # the same frames must give the model's own scores, not just a similar class map
        return f"{where}: {onnx_file}'s scores are not the model's ({difference})"
    differing = got != reference
    if manifest.output.kind is OutputKind.LOGITS:
        differing &= ~nvinfer.near_ties(golden)  # softmax may round a near-tie either way
    count = int(differing.sum())
    if count:
        unset = int((got == -1).sum())
        why = f" ({unset} left at -1: below segmentation-threshold)" if unset else ""
        return f"{where}: {count} of {got.size} pixels differ from the model's class map{why}"
    return None


# --------------------------------------------------------------------------- helpers
def _failed(result: CheckResult, problem: str) -> CheckResult:
    result.status = "failed"
    result.problems.append(problem)
    return result


def _show(value: Any) -> str:
    if isinstance(value, Enum):
        return repr(value.value)
    if isinstance(value, tuple):
        return repr(list(value))
    return repr(value)
