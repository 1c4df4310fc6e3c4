"""``write_bundle``: a deployment directory from a segdeploy ONNX file (and its TensorRT engine).

Every input is checked before anything is written (``plan_bundle``); the files are written into a
temporary directory (``segdeploy.bundle.target``), the bundle is checked with ``check_bundle`` there, and
only then put in place, so a half-written or self-contradicting bundle never appears under its name.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from segdeploy.artifact import Metadata, load_onnx, require_metadata
from segdeploy.bundle import deepstream, nvinfer, triton
from segdeploy.bundle.engine import EngineFactsGiven, read_engine
from segdeploy.bundle.golden import golden_frames, golden_input
from segdeploy.bundle.layout import (
    TRITON_DEFAULT_MAX_BATCH,
    check_name,
    default_labels,
    default_name,
    file_hashes,
    palette,
    read_labels,
)
from segdeploy.bundle.manifest import (
    CLIENT,
    DEEPSTREAM_ONNX,
    LABELS,
    MODEL,
    PLAN,
    README,
    TRITON_DIR,
    BundleManifest,
    DeepStreamFiles,
    DeepStreamMode,
    EngineInfo,
    Golden,
    OutputSpec,
    Provenance,
    TensorProfile,
    TritonKind,
)
from segdeploy.bundle.readme import readme_text
from segdeploy.bundle.target import Target, building, check_target
from segdeploy.bundle.tensors import TensorInfo, check_graph, graph_io
from segdeploy.errors import SegdeployError, UserInputError
from segdeploy.frames import FramePipeline


@dataclass
class BundlePlan:
    """Everything a bundle is made of, checked, before a file is written."""

    onnx_path: Path
    target: Target
    name: str
    metadata: Metadata
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    labels: list[str]
    engine_path: Path | None = None
    engine: EngineInfo | None = None
    profile: TensorProfile | None = None


def write_bundle(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: str | os.PathLike[str] | None = None,
    engine_facts: EngineFactsGiven | None = None,
    labels: str | os.PathLike[str] | None = None,
    name: str | None = None,
    force: bool = False,
) -> Path:
    """Write the deployment bundle of a ``segdeploy export`` ONNX file to ``out_dir``.

    Args:
        onnx_path: the ONNX file (with segdeploy metadata).
        out_dir: the bundle directory: new (its parent must exist), or an existing empty directory.
        engine: a TensorRT engine built from this ONNX: by ``segdeploy build`` (its ``.json`` sidecar beside
            it), or elsewhere with ``engine_facts``.
        engine_facts: the engine's facts when it has no sidecar (TensorRT version, compute capability, profile).
        labels: a text file with one label per class; default ``class_0``, ``class_1``...
        name: the model name (Triton model directories); default from the ONNX file name.
        force: replace an existing non-empty ``out_dir`` (only once the new bundle is complete).

    Returns:
        ``out_dir``.

    Raises:
        UserInputError: not a segdeploy ONNX (naming the missing metadata), a graph that disagrees with its
            metadata, labels that do not match the classes, an engine without facts or whose facts contradict
            the ONNX, or an output location that cannot be written.
    """
    plan = plan_bundle(
        onnx_path, out_dir, engine=engine, engine_facts=engine_facts, labels=labels, name=name, force=force
    )
    with building(plan.target) as tmp:
        _fill(tmp, plan)
        from segdeploy.bundle.check import check_bundle

        report = check_bundle(tmp)
        if not report.ok:  # a bug of this writer: never put a bundle in place that its own check refuses
            raise SegdeployError(f"the bundle written for {onnx_path} fails its own check: {report.problems[0]}")
    return plan.target.path


def plan_bundle(
    onnx_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    engine: str | os.PathLike[str] | None = None,
    engine_facts: EngineFactsGiven | None = None,
    labels: str | os.PathLike[str] | None = None,
    name: str | None = None,
    force: bool = False,
) -> BundlePlan:
    """Check every input of :func:`write_bundle` and gather what the bundle needs; writes nothing.

    Raises:
        UserInputError: as :func:`write_bundle`.
    """
    onnx_path = Path(onnx_path)
    target = check_target(out_dir, force, [Path(p) for p in (onnx_path, engine, labels) if p is not None])
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
        plan.engine_path = Path(engine)
        plan.engine, plan.profile = read_engine(plan.engine_path, onnx_path, model, metadata, engine_facts)
    elif engine_facts is not None:
        raise UserInputError("engine facts (--trt-version, --compute-capability, shapes) need --engine ENGINE")
    return plan


# --------------------------------------------------------------------------- writing
def _fill(root: Path, plan: BundlePlan) -> None:
    """All files of the bundle under ``root``, the manifest last."""
    from segdeploy.fileio import sha256_file

    shutil.copyfile(plan.onnx_path, root / MODEL)
    if plan.engine_path is not None:
        shutil.copyfile(plan.engine_path, root / PLAN)
    (root / LABELS).write_text("".join(f"{label}\n" for label in plan.labels), encoding="utf-8")
    metadata = plan.metadata
    pipeline = FramePipeline.from_metadata(metadata)
    golden = Golden()
    _write_golden(root, metadata, pipeline, golden)

    model = load_onnx(root / MODEL)
    spec = BundleManifest.input_of(metadata, plan.profile)
    triton_models = triton.model_dirs(plan.name, plan.engine is not None)
    manifest = BundleManifest(
        name=plan.name,
        architecture=metadata.architecture or "",
        num_classes=int(metadata.num_classes),  # type: ignore[arg-type]
        labels=tuple(plan.labels),
        palette=tuple(palette(max(int(metadata.num_classes or 0), 2))),
        precision=metadata.precision,
        opset=int(metadata.opset),  # type: ignore[arg-type]
        input=spec,
        output=OutputSpec(metadata.output),
        engine=plan.engine,
        golden=golden,
        pipeline=pipeline,
        provenance=Provenance.of(
            metadata,
            model_sha256=sha256_file(root / MODEL),
            ir_version=model.ir_version,
            producer=f"{model.producer_name} {model.producer_version}".strip(),
        ),
        deepstream=DeepStreamFiles(DeepStreamMode.DERIVED),
        triton=dict(triton_models),
    )
    if deepstream.direct_fit(manifest):
        manifest = replace(manifest, deepstream=DeepStreamFiles(DeepStreamMode.DIRECT, onnx=None))
    batch = triton.max_batch_size(spec, TRITON_DEFAULT_MAX_BATCH)
    for model_name, kind in triton_models.items():
        directory = root / TRITON_DIR / model_name
        (directory / triton.VERSION).mkdir(parents=True)
        comment = (
            f"{plan.name}: ONNX Runtime backend, written by segdeploy bundle"
            if kind is TritonKind.ONNX
            else f"{plan.name}: TensorRT plan for TensorRT {plan.engine.tensorrt_version}, compute "  # type: ignore[union-attr]
            f"capability {plan.engine.compute_capability}, written by segdeploy bundle"  # type: ignore[union-attr]
        )
        (directory / "config.pbtxt").write_text(
            triton.config_text(model_name, kind, plan.inputs, plan.outputs, batch, comment), encoding="utf-8"
        )
        source = MODEL if kind is TritonKind.ONNX else PLAN
        shutil.copyfile(root / source, directory / triton.VERSION / f"model.{kind.value}")

    config = root / manifest.deepstream.config
    config.parent.mkdir()
    if manifest.deepstream.mode is DeepStreamMode.DERIVED:
        import onnx

        onnx.save(nvinfer.deepstream_model(model, metadata), str(root / DEEPSTREAM_ONNX))
    config.write_text(deepstream.config_text(manifest), encoding="utf-8")
    shutil.copyfile(Path(triton.__file__).with_name("triton_client.py"), root / CLIENT)
    (root / README).write_text(readme_text(manifest, plan.target.path.name), encoding="utf-8")
    manifest.with_files(file_hashes(root)).write(root)


def _write_golden(root: Path, metadata: Metadata, pipeline: FramePipeline, golden: Golden) -> None:
    from segdeploy.runtime.ort_runner import OrtRunner

    frames = golden_frames(metadata)
    x = golden_input(pipeline, frames)
    with OrtRunner(root / MODEL, precision=metadata.precision, threads=1) as runner:
        y = runner.infer(x)
    (root / golden.input).parent.mkdir(exist_ok=True)
    np.save(root / golden.frames, frames)
    np.save(root / golden.input, x)
    np.save(root / golden.output, np.ascontiguousarray(y))
