"""``write_bundle``: a deployment directory from a segdeploy ONNX file (and its TensorRT engine).

Every input is checked before anything is written. The bundle is built in a temporary directory beside
the target and renamed into place at the end, so a half-written bundle never appears under its name;
``force`` replaces an existing directory only once the new one is complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.artifact import (
    INPUT_NAME,
    OUTPUT_NAMES,
    Metadata,
    dynamic_axes,
    file_input_shape,
    load_onnx,
    require_metadata,
)
from segdeploy.bundle import deepstream, triton
from segdeploy.bundle.manifest import (
    DEEPSTREAM_CONFIG,
    GOLDEN_INPUT,
    GOLDEN_OUTPUT,
    LABELS,
    MANIFEST,
    MODEL,
    PLAN,
    README,
    TRITON_DEFAULT_MAX_BATCH,
    build_manifest,
    check_name,
    default_labels,
    default_name,
    dumps,
    file_hashes,
    golden_input,
    read_labels,
)
from segdeploy.bundle.readme import readme_text
from segdeploy.bundle.tensors import TensorInfo, graph_io
from segdeploy.errors import UserInputError

_SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "profile")


@dataclass
class BundlePlan:
    """Everything a bundle is made of, checked, before a file is written."""

    onnx_path: Path
    out_dir: Path
    name: str
    metadata: Metadata
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    labels: list[str]
    engine_path: Path | None = None
    sidecar: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def write_bundle(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    name: str | None = None,
    force: bool = False,
) -> Path:
    """Write the deployment bundle of a ``segdeploy export`` ONNX file to ``out_dir``.

    Args:
        onnx_path: the ONNX file (with segdeploy metadata).
        out_dir: the bundle directory to create; its parent must exist.
        engine: a TensorRT engine built from this ONNX by ``segdeploy build`` (its ``.json`` sidecar beside it).
        labels: a text file with one label per class; default ``class_0``, ``class_1``...
        name: the model name (Triton model directories); default from the ONNX file name.
        force: replace an existing non-empty ``out_dir`` (only once the new bundle is complete).

    Returns:
        ``out_dir``.

    Raises:
        UserInputError: not a segdeploy ONNX (naming the missing metadata), a graph that disagrees with its
            metadata, labels that do not match the classes, a missing engine or sidecar, an engine built from
            another file, or an existing non-empty ``out_dir`` without ``force``.
    """
    plan = plan_bundle(onnx_path, out_dir, engine=engine, labels=labels, name=name, force=force)
    target = plan.out_dir
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.resolve().name}.", suffix=".tmp", dir=target.resolve().parent))
    try:
        _fill(tmp, plan)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it a plain mkdir's mode
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def plan_bundle(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: str | os.PathLike[str] | None = None,
    labels: str | os.PathLike[str] | None = None,
    name: str | None = None,
    force: bool = False,
) -> BundlePlan:
    """Check every input of :func:`write_bundle` and gather what the bundle needs; writes nothing.

    Raises:
        UserInputError: as :func:`write_bundle`.
    """
    onnx_path, target = Path(onnx_path), Path(out_dir)
    _check_target(target, force, [Path(p) for p in (onnx_path, engine, labels) if p is not None])
    model = load_onnx(onnx_path)
    metadata = require_metadata(model, where=str(onnx_path))
    inputs, outputs = graph_io(model)
    check_graph(onnx_path, metadata, inputs, outputs)
    num_classes = int(metadata.num_classes)  # type: ignore[arg-type]
    label_list = read_labels(Path(labels), num_classes) if labels is not None else default_labels(num_classes)
    plan = BundlePlan(
        onnx_path,
        target,
        check_name(name) if name is not None else default_name(onnx_path),
        metadata,
        inputs,
        outputs,
        label_list,
    )
    if engine is not None:
        plan.engine_path, plan.sidecar = Path(engine), _read_engine(Path(engine), onnx_path, metadata)
    return plan


# --------------------------------------------------------------------------- checks before any work
def _check_target(target: Path, force: bool, inputs: list[Path]) -> None:
    if not target.parent.is_dir():
        raise UserInputError(f"cannot write bundle {target}: directory {target.parent} does not exist")
    if target.exists() and not target.is_dir():
        raise UserInputError(f"cannot write bundle {target}: it exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise UserInputError(f"{target} exists and is not empty: pick another directory or pass --force")
        resolved = target.resolve()
        if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
            raise UserInputError(f"cannot replace {target}: it is the current directory or holds it")
        for path in inputs:
            if path.exists() and resolved in path.resolve().parents:
                raise UserInputError(f"cannot replace {target}: it holds the input {path}; copy it elsewhere first")


def check_graph(path: Path, metadata: Metadata, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
    """The graph must be what its metadata says: the input and output a consumer will be told about."""
    pre = metadata.preprocessing
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = ", ".join(t.name for t in inputs)
        raise UserInputError(f"{path} has inputs ({names}); a segdeploy file has one input named {INPUT_NAME!r}")
    tensor = inputs[0]
    expected_shape = file_input_shape(metadata.trace_shape, pre.input_format)  # type: ignore[arg-type]
    free = set(dynamic_axes(pre.input_format).values()) & set(metadata.dynamic_axes)
    axis_names = {i: n for i, n in dynamic_axes(pre.input_format).items() if n in free}
    if tensor.dtype != pre.input_format.dtype or tensor.rank != 4:
        raise UserInputError(
            f"{path}: input {tensor.name!r} is {tensor.dtype} of rank {tensor.rank}, but its metadata "
            f"says {pre.input_format.value}"
        )
    for axis, (dim, traced) in enumerate(zip(tensor.dims, expected_shape)):
        if isinstance(dim, int) and (axis in axis_names or dim != traced):
            raise UserInputError(
                f"{path}: input dims {list(tensor.dims)} disagree with its metadata (traced shape "
                f"{list(expected_shape)}, dynamic {', '.join(metadata.dynamic_axes) or 'none'})"
            )
        if not isinstance(dim, int) and axis not in axis_names:
            raise UserInputError(f"{path}: input axis {axis} is dynamic but its metadata fixes it")
    wanted = OUTPUT_NAMES[metadata.output]
    main = next((t for t in outputs if t.name == wanted), None)
    if main is None or outputs[0].name != wanted:
        raise UserInputError(
            f"{path}: its first output should be {wanted!r} (output {metadata.output.value}), the "
            f"graph has {', '.join(t.name for t in outputs)}"
        )
    if main.dtype != metadata.output.dtype or main.rank != len(metadata.output.layout):
        raise UserInputError(
            f"{path}: output {wanted!r} is {main.dtype} of rank {main.rank}, expected "
            f"{metadata.output.dtype} {metadata.output.layout}"
        )
    if metadata.output.layout == "NCHW" and main.dims[1] != metadata.num_classes:
        raise UserInputError(
            f"{path}: output {wanted!r} has {main.dims[1]} channels, its metadata says {metadata.num_classes} classes"
        )
    if not metadata.num_classes or metadata.num_classes < 1:
        raise UserInputError(f"{path}: bad num_classes {metadata.num_classes} in its metadata")


def _read_engine(engine: Path, onnx_path: Path, metadata: Metadata) -> dict[str, Any]:
    from segdeploy.fileio import sha256_file
    from segdeploy.runtime.sidecar import read_sidecar, sidecar_path

    if not engine.is_file():
        raise UserInputError(f"engine {engine} does not exist")
    if engine.stat().st_size == 0:
        raise UserInputError(f"engine {engine} is empty")
    sidecar = read_sidecar(engine)
    if sidecar is None:
        raise UserInputError(
            f"engine {engine} has no sidecar {sidecar_path(engine)} (the facts `segdeploy build` "
            "writes beside it): build the engine with `segdeploy build`"
        )
    missing = [key for key in _SIDECAR_KEYS if key not in sidecar]
    if (
        missing
        or not isinstance(sidecar["profile"], dict)
        or any(len(sidecar["profile"].get(k) or ()) != 4 for k in ("min", "opt", "max"))
    ):
        raise UserInputError(
            f"{sidecar_path(engine)} is not a segdeploy engine sidecar "
            f"({', '.join(missing) or 'profile'} missing or malformed)"
        )
    built_from = (sidecar.get("onnx") or {}).get("sha256")
    if built_from is not None and built_from != sha256_file(onnx_path):
        raise UserInputError(
            f"engine {engine} was built from another ONNX file than {onnx_path} "
            f"({(sidecar.get('onnx') or {}).get('path', '?')}); bundle the ONNX it was built from"
        )
    recorded = sidecar.get("engine_sha256")
    if recorded is not None and recorded != sha256_file(engine):
        raise UserInputError(f"engine {engine} is not the file its sidecar describes (sha256 differs): rebuild it")
    fmt = sidecar.get("input_format", "float32-nchw")
    if fmt != metadata.preprocessing.input_format.value:
        raise UserInputError(
            f"engine {engine} takes {fmt} input, {onnx_path} takes {metadata.preprocessing.input_format.value}"
        )
    return sidecar


# --------------------------------------------------------------------------- writing
def _fill(root: Path, plan: BundlePlan) -> None:
    """All files of the bundle under ``root``, the manifest last."""
    shutil.copyfile(plan.onnx_path, root / MODEL)
    if plan.engine_path is not None:
        shutil.copyfile(plan.engine_path, root / PLAN)
    (root / LABELS).write_text("".join(f"{label}\n" for label in plan.labels), encoding="utf-8")
    _write_golden(root, plan.metadata)

    manifest = build_manifest(name=plan.name, metadata=plan.metadata, labels=plan.labels, engine=plan.sidecar, files={})
    spec = manifest["input"]
    triton_models = triton.model_dirs(plan.name, plan.engine_path is not None)
    batch = triton.max_batch_size("batch" in spec["dynamic_axes"], spec["tensorrt_profile"], TRITON_DEFAULT_MAX_BATCH)
    for model, kind in triton_models.items():
        directory = root / "triton" / model
        (directory / "1").mkdir(parents=True)
        comment = (
            f"{plan.name}: ONNX Runtime backend, written by segdeploy bundle"
            if kind == "onnx"
            else f"{plan.name}: TensorRT plan for TensorRT {manifest['engine']['tensorrt_version']}, compute "
            f"capability {manifest['engine']['compute_capability']}, written by segdeploy bundle"
        )
        (directory / "config.pbtxt").write_text(
            triton.config_text(model, kind, plan.inputs, plan.outputs, batch, comment), encoding="utf-8"
        )
        shutil.copyfile(root / (MODEL if kind == "onnx" else PLAN), directory / "1" / f"model.{kind}")

    reasons, notes = deepstream.fit(manifest)
    if not reasons:
        (root / DEEPSTREAM_CONFIG).parent.mkdir()
        (root / DEEPSTREAM_CONFIG).write_text(deepstream.config_text(manifest, plan.name), encoding="utf-8")
    readme = readme_text(manifest, triton_models, (reasons, notes), plan.out_dir.name)
    (root / README).write_text(readme, encoding="utf-8")
    manifest["files"] = file_hashes(root)
    (root / MANIFEST).write_text(dumps(manifest), encoding="utf-8")


def _write_golden(root: Path, metadata: Metadata) -> None:
    from segdeploy.runtime.ort_runner import OrtRunner

    x = golden_input(metadata)
    with OrtRunner(root / MODEL, precision=metadata.precision, threads=1) as runner:
        y = runner.infer(x)
    (root / GOLDEN_INPUT).parent.mkdir()
    np.save(root / GOLDEN_INPUT, x)
    np.save(root / GOLDEN_OUTPUT, np.ascontiguousarray(y))


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished bundle to ``target``; an existing one is moved aside first and removed after."""
    if not target.exists():
        os.rename(tmp, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.resolve().name}.", suffix=".old", dir=target.resolve().parent))
    old.rmdir()
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
