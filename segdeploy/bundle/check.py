"""``check_bundle``: everything about a bundle that can be proven without a server or a GPU.

In order: the manifest's structure; the files against their sha256 (none missing, none extra); the
model's metadata and graph against the manifest; the golden pair in ONNX Runtime; each Triton config
with Triton's own schema against the ONNX; the DeepStream config as a GLib key file against the model.
Every check runs; the first problem found is the one a one-line error names.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from segdeploy.artifact import OutputKind, load_onnx, parse_choice, require_metadata
from segdeploy.bundle import deepstream, triton
from segdeploy.bundle.manifest import (
    DEEPSTREAM_CONFIG,
    LABELS,
    MANIFEST,
    MODEL,
    PLAN,
    SCHEMA_VERSION,
    build_manifest,
    compare_golden,
)
from segdeploy.bundle.tensors import graph_io
from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError, VerificationError


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
    if not (root / MANIFEST).is_file():
        raise UserInputError(f"{root} has no {MANIFEST}: not a segdeploy bundle")
    report = BundleCheck(root)
    manifest, structure = _read_manifest(root)
    report.results.append(structure)
    if manifest is None:
        return report
    hashes = {str(k): str(v) for k, v in manifest["files"].items()}
    report.results.append(_check_files(root, manifest, hashes))
    model, model_result = _check_model(root, manifest)
    report.results.append(model_result)
    report.results.append(_check_golden(root, manifest))
    report.results += _check_triton(root, manifest, model, hashes)
    report.results.append(_check_deepstream(root, manifest, model))
    return report


# --------------------------------------------------------------------------- the manifest
_REQUIRED = {
    "": {
        "schema_version": int,
        "name": str,
        "num_classes": int,
        "labels": list,
        "palette": list,
        "input": dict,
        "output": dict,
        "golden": dict,
        "files": dict,
        "precision": str,
    },
    "input": {
        "name": str,
        "dtype": str,
        "layout": str,
        "color": str,
        "mean": list,
        "std": list,
        "normalization_fused": bool,
        "shape": list,
        "dynamic_axes": list,
        "size_multiple": int,
        "min_size": int,
    },
    "output": {"name": str, "kind": str, "dtype": str, "layout": str},
    "golden": {"input": str, "output": str},
}


def _read_manifest(root: Path) -> tuple[dict[str, Any] | None, CheckResult]:
    result = CheckResult("manifest", "ok", f"{MANIFEST}, schema version {SCHEMA_VERSION}")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, _failed(result, f"{MANIFEST} is not valid JSON ({exc})")
    if not isinstance(manifest, dict):
        return None, _failed(result, f"{MANIFEST} is not a JSON object")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return None, _failed(
            result,
            f"{MANIFEST} has schema_version {manifest.get('schema_version')!r}; this segdeploy reads {SCHEMA_VERSION}",
        )
    for section, keys in _REQUIRED.items():
        obj = manifest if not section else manifest.get(section)
        for key, kind in keys.items():
            value = obj.get(key) if isinstance(obj, dict) else None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                path = f"{section}.{key}" if section else key
                return None, _failed(result, f"{MANIFEST}: '{path}' is missing or not a {kind.__name__}")
    problems = []
    count = manifest["num_classes"]
    if count < 1:
        problems.append(f"{MANIFEST}: num_classes {count} is not positive")
    if len(manifest["labels"]) != count:
        problems.append(f"{MANIFEST}: {len(manifest['labels'])} labels for {count} classes")
    palette = manifest["palette"]
    if len(palette) < max(count, 2) or any(
        not isinstance(c, list) or len(c) != 3 or any(not isinstance(v, int) or not 0 <= v <= 255 for v in c)
        for c in palette
    ):
        problems.append(f"{MANIFEST}: the palette needs {max(count, 2)} [r, g, b] colors of 0..255")
    for path in [*manifest["files"], manifest["golden"]["input"], manifest["golden"]["output"]]:
        if not _inside(path):
            problems.append(f"{MANIFEST}: path {path!r} leaves the bundle")
    for problem in problems:
        _failed(result, problem)
    return (manifest if not problems else None), result


# --------------------------------------------------------------------------- files
def _check_files(root: Path, manifest: dict[str, Any], listed: dict[str, str]) -> CheckResult:
    from segdeploy.fileio import sha256_file

    result = CheckResult("files", "ok", f"{len(listed)} files, sha256")
    for path, digest in listed.items():
        file = root / path
        if not file.is_file():
            _failed(result, f"{path} is listed in the manifest but missing")
        elif sha256_file(file) != digest:
            _failed(result, f"{path} differs from the manifest's sha256 (changed after bundling)")
    actual = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    for path in sorted(actual - set(listed)):
        _failed(result, f"{path} is in the bundle but not in the manifest")
    required = [MODEL, LABELS, manifest["golden"]["input"], manifest["golden"]["output"]]
    if manifest.get("engine"):
        required.append(str(manifest["engine"].get("file", PLAN)))
    for path in required:
        if path not in listed:
            _failed(result, f"{path} is not listed in the manifest")
    return result


# --------------------------------------------------------------------------- the model against the manifest
def _check_model(root: Path, manifest: dict[str, Any]) -> tuple[Any, CheckResult]:
    from segdeploy.bundle.write import check_graph

    result = CheckResult("model", "ok", f"{MODEL} metadata and graph, {LABELS}")
    try:
        model = load_onnx(root / MODEL)
        metadata = require_metadata(model, where=MODEL)
        inputs, outputs = graph_io(model)
        check_graph(Path(MODEL), metadata, inputs, outputs)
    except UserInputError as exc:
        return None, _failed(result, str(exc))
    expected = build_manifest(
        name=manifest["name"], metadata=metadata, labels=manifest["labels"], engine=None, files={}
    )
    for section in ("input", "output"):
        for key, value in expected[section].items():
            if key == "tensorrt_profile":
                continue
            got = manifest[section].get(key)
            if not _same(got, value):
                _failed(result, f"{MANIFEST}: {section}.{key} is {got!r}, {MODEL} says {value!r}")
    for key in ("num_classes", "precision", "opset"):
        if not _same(manifest.get(key), expected[key]):
            _failed(result, f"{MANIFEST}: {key} is {manifest.get(key)!r}, {MODEL} says {expected[key]!r}")
    labels_file = root / LABELS
    if labels_file.is_file():
        lines = labels_file.read_text(encoding="utf-8", errors="replace").splitlines()
        if lines != manifest["labels"]:
            _failed(result, f"{LABELS} ({len(lines)} lines) is not the manifest's labels ({len(manifest['labels'])})")
    engine = manifest.get("engine")
    if engine is not None:
        missing = [k for k in ("file", "tensorrt_version", "compute_capability") if not isinstance(engine.get(k), str)]
        if missing:
            _failed(result, f"{MANIFEST}: engine.{missing[0]} is missing")
        if not manifest["input"].get("tensorrt_profile"):
            _failed(result, f"{MANIFEST}: an engine but no input.tensorrt_profile")
    return (inputs, outputs), result


# --------------------------------------------------------------------------- golden pair
def _check_golden(root: Path, manifest: dict[str, Any]) -> CheckResult:
    from segdeploy.runtime.ort_runner import OrtRunner

    golden = manifest["golden"]
    result = CheckResult("golden", "ok", "ONNX Runtime reproduces golden/output.npy")
    arrays = []
    for key in ("input", "output"):
        path = root / golden[key]
        try:
            arrays.append(np.load(path, allow_pickle=False))
        except FileNotFoundError:
            return _failed(result, f"{golden[key]} is missing")
        except (OSError, ValueError) as exc:
            return _failed(result, f"{golden[key]} is not a readable .npy file ({exc})")
    x, expected = arrays
    spec = manifest["input"]
    if x.dtype.name != spec["dtype"] or x.ndim != len(spec["shape"]):
        return _failed(
            result, f"{golden['input']} is {x.dtype} of rank {x.ndim}, the input is {spec['dtype']} {spec['layout']}"
        )
    try:
        kind = parse_choice(OutputKind, manifest["output"]["kind"], "output kind")
        with OrtRunner(root / MODEL, precision=manifest.get("precision", "fp32")) as runner:
            output = runner.infer(x)
    except SegdeployError as exc:
        return _failed(result, f"ONNX Runtime cannot run {golden['input']}: {exc}")
    except Exception as exc:
        return _failed(result, f"ONNX Runtime failed on {golden['input']}: {type(exc).__name__}: {exc}".splitlines()[0])
    difference = compare_golden(output, expected, kind)
    if difference is not None:
        return _failed(result, f"ONNX Runtime does not reproduce {golden['output']}: {difference}")
    result.detail += f" ({'x'.join(map(str, x.shape))} {x.dtype})"
    return result


# --------------------------------------------------------------------------- Triton
def _check_triton(root: Path, manifest: dict[str, Any], model: Any, hashes: dict[str, str]) -> list[CheckResult]:
    engine = manifest.get("engine")
    expected = triton.model_dirs(manifest["name"], engine is not None)
    present = {p.name for p in (root / "triton").iterdir() if p.is_dir()} if (root / "triton").is_dir() else set()
    results = []
    for extra in sorted(present - set(expected)):
        results.append(
            CheckResult(
                f"triton {extra}",
                "failed",
                "",
                [(f"triton/{extra} is not a model of this bundle ({', '.join(expected)})")],
            )
        )
    classes_axis = None if manifest["output"]["layout"] == "NHW" else 1
    for name, kind in expected.items():
        result = CheckResult(f"triton {name}", "ok", f"triton/{name}/config.pbtxt against Triton's ModelConfig")
        results.append(result)
        source, copy = (MODEL if kind == "onnx" else str(engine.get("file", PLAN))), f"triton/{name}/1/model.{kind}"
        if hashes.get(copy) is None or hashes.get(copy) != hashes.get(source):
            _failed(result, f"{copy} is not the bundle's {source}")
        if model is None:
            result.status, result.detail = "skipped", f"{MODEL} did not load"
            continue
        try:
            problems = triton.check_model(
                root / "triton" / name,
                kind,
                *model,
                num_classes=manifest["num_classes"],
                classes_axis=classes_axis,
                profile=manifest["input"].get("tensorrt_profile"),
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
def _check_deepstream(root: Path, manifest: dict[str, Any], model: Any) -> CheckResult:
    reasons, _ = deepstream.fit(manifest)
    path = root / DEEPSTREAM_CONFIG
    result = CheckResult("deepstream", "ok", f"{DEEPSTREAM_CONFIG} as a GLib key file against the model")
    if reasons:
        if path.exists():
            return _failed(result, f"{DEEPSTREAM_CONFIG} is present but nvinfer cannot run this model: {reasons[0]}")
        result.detail = "no config, rightly: " + reasons[0]
        return result
    if not path.is_file():
        return _failed(result, f"{DEEPSTREAM_CONFIG} is missing (nvinfer can run this model)")
    if model is None:
        result.status, result.detail = "skipped", f"{MODEL} did not load"
        return result
    bundle_files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for problem in deepstream.check_config(
        path.read_text(encoding="utf-8", errors="replace"), manifest, [t.name for t in model[1]], bundle_files
    ):
        _failed(result, problem)
    return result


# --------------------------------------------------------------------------- helpers
def _failed(result: CheckResult, problem: str) -> CheckResult:
    result.status = "failed"
    result.problems.append(problem)
    return result


def _inside(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts and "\\" not in path


def _same(a: Any, b: Any) -> bool:
    """Equal, numbers compared as float32 (the manifest's mean/std pass through a float32 text round trip)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(np.float32(a)) == float(np.float32(b))
    return a == b
