"""Where the stages meet: the one module that calls a stage with what a later one decides.

::

    export_onnx:    export (build_onnx) -> lint -> verify over the size rule, narrowing it -> atomic write
    cached_onnx:    the cache's key -> export, unverified, when the cache has no file
    cached_engine:  the cache's key -> TensorRT build, when the cache has no engine
    run_benchmarks: the bench, with its exports and engines from the cache (``CachedFiles``)

No stage imports a later one (``tests/test_architecture.py``); what needs two stages in order is
composed here, and the CLI calls it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy.artifact import DEFAULT_OPSET, Metadata, Precision, Runtime, parse_precision
from segdeploy.errors import VerificationError
from segdeploy.export.onnx import STAGES as EXPORT_STAGES
from segdeploy.export.options import Calibration, ExportOptions, IOFormat, ModelSpec
from segdeploy.shapes import Shape, format_shape

if TYPE_CHECKING:
    from torch import nn

    from segdeploy.bench.stats import BenchSuite
    from segdeploy.export.capture import SizeRule
    from segdeploy.export.lint import LintReport
    from segdeploy.export.onnx import OnnxModel, StageClock
    from segdeploy.verify import VerificationReport

__all__ = [
    "STAGES", "CachedFiles", "Calibration", "ExportResult", "ExportVerificationError", "IOFormat", "ModelSpec",
    "cached_engine", "cached_onnx", "export_onnx", "run_benchmarks", "verify_rule",
]  # fmt: skip

STAGES = (*EXPORT_STAGES, "lint", "verify")


# --------------------------------------------------------------------------- export -> verify
@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and what it found on the way."""

    path: Path
    metadata: Metadata
    ir_version: int
    size_rule: SizeRule
    lint: LintReport | None = None
    verification: VerificationReport | None = None
    fp32_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def tensorrt_ready(self) -> bool:
        """The TensorRT lint found nothing that stops TensorRT's parser."""
        return self.lint is None or self.lint.ok

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``segdeploy export --report`` writes)."""
        return {
            "path": str(self.path),
            "opset": self.metadata.opset,
            "ir_version": self.ir_version,
            "input_shape": format_shape(self.metadata.trace_shape) if self.metadata.trace_shape else None,
            "dynamic": not self.metadata.static,
            "precision": self.metadata.precision.value,
            "rewrites": list(self.metadata.rewrites),
            "sizes": self.metadata.describe_sizes(),
            "sizes_narrowed": self.size_rule.narrowed,
            "metadata": self.metadata.to_props(),
            "tensorrt_ready": self.tensorrt_ready,
            "lint": self.lint.to_dict() if self.lint is not None else None,
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "fp32_nodes": list(self.fp32_nodes),
            "warnings": list(self.warnings),
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "seconds": round(self.seconds, 3),
        }


class ExportVerificationError(VerificationError):
    """The exported file disagrees with PyTorch, or cannot be verified; nothing was written.

    Attributes:
        report: the verification that failed.
        result: the export as it would have been (``result.to_dict()`` is what ``--report`` writes).
    """

    def __init__(self, message: str, report: VerificationReport, result: ExportResult) -> None:
        super().__init__(message)
        self.report = report
        self.result = result

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with its attributes, e.g. across processes
        return (type(self), (str(self), self.report, self.result))


def export_onnx(
    model: nn.Module | str,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    dynamic: bool = True,
    precision: Precision | str = Precision.FP32,
    spec: ModelSpec | None = None,
    io: IOFormat | None = None,
    calibration: Calibration | None = None,
    simplify: bool = True,
    verify: bool = True,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a segmentation model to an ONNX file TensorRT's parser accepts, and prove parity.

    Args:
        model: an ``nn.Module``, a zoo name or ``path/to/file.py:factory``.
        path: the ``.onnx`` file to write (atomically; not written if verification fails).
        input_shape: NCHW shape to trace and verify at; its C is the model's input channels.
        opset: default-domain opset to write, 13 to 20.
        dynamic: dynamic batch/height/width axes; ``False`` fixes ``input_shape``.
        precision: ``fp32``, ``fp16`` (FP16 weights and math, float32 input/output), ``int8`` (Q/DQ for
            TensorRT, FP32 elsewhere) or ``int8-fp16`` (Q/DQ, FP16 elsewhere; opset >= 19).
        spec: how a zoo name or factory is built: classes, channels, checkpoint, options (``ModelSpec``).
        io: input format, color order, normalization and output kind (``IOFormat``; default float32
            NCHW in, logits out).
        calibration: INT8 only: the calibration data and quantizer (``Calibration``).
        simplify: run onnxsim (a failure is recorded as a warning, not raised).
        verify: compare the file with PyTorch at several valid shapes before writing it.
        progress: called with each stage name in ``STAGES`` as it starts.

    Returns:
        An ``ExportResult``.

    Raises:
        UserInputError: bad model name, shape, opset, option, or a model that raises in PyTorch.
        ExportError: capture, rewrite, conversion or checking failed.
        ExportVerificationError: the file disagrees with PyTorch; nothing is written, and the error's
            ``report`` and ``result`` hold the report and the would-be ``ExportResult``.
    """
    from segdeploy.export.lint import lint_onnx
    from segdeploy.export.onnx import StageClock, build_onnx
    from segdeploy.fileio import atomic_output, check_output_path

    started = time.perf_counter()
    options = ExportOptions(
        input_shape, opset=opset, dynamic=dynamic, simplify=simplify, precision=precision,
        spec=spec or ModelSpec(), io=io or IOFormat(), calibration=calibration,
    )  # fmt: skip
    plan = options.check()
    check_output_path(path)  # before minutes of export work, not after
    clock = StageClock(progress)
    built = build_onnx(model, plan, clock)
    if (
        not verify
        and built.guards is not None
        and (unproven := built.guards.unproven(built.size_rule, built.trace_shape))
    ):
        built.warnings.append(unproven)  # nothing narrows an unverified rule: say where it may not hold
    with atomic_output(path) as tmp:
        built.write(tmp)
        clock("lint")
        lint = lint_onnx(built.proto, checker=False)  # the file's own proto, fully checked by the export
        report = _verify_written(built, tmp, clock) if verify else None
        clock(None)
        result = ExportResult(
            Path(path), built.metadata, built.ir_version, built.size_rule, lint=lint, verification=report,
            fp32_nodes=built.fp32_nodes, warnings=built.warnings, stage_seconds=clock.timings,
            seconds=time.perf_counter() - started,
        )  # fmt: skip
        if report is not None and not report.passed:
            what = "disagrees with PyTorch" if report.judged else "cannot be verified"
            message = f"the exported file {what}, {path} not written: {report.worst()}"
            raise ExportVerificationError(message, report, result)
    return result


def _verify_written(built: OnnxModel, tmp: Path, clock: StageClock) -> VerificationReport:
    """Verify the file written at ``tmp`` over its size rule; a narrowed rule rewrites the file and the model."""
    clock("verify")

    def narrow(rule: SizeRule) -> Metadata:
        metadata = built.narrow(rule)
        built.write(tmp)
        return metadata

    report, _ = verify_rule(
        tmp, built.module, built.metadata, built.size_rule, built.trace_shape, narrow, guards=built.guards
    )
    return report


def verify_rule(
    path: str | os.PathLike[str],
    module: Any,
    metadata: Metadata,
    rule: Any,
    trace_shape: Shape,
    narrow: Callable[[Any], Metadata],
    progress: Callable[[str], None] | None = None,
    guards: Any = None,
) -> tuple[VerificationReport, Any]:
    """Verify a just-written ONNX file over its size rule, narrowing the rule to what its runs prove.

    Args:
        path: the ONNX file (run with ONNX Runtime).
        module: the PyTorch network.
        metadata: the file's metadata.
        rule: its ``segdeploy.export.capture.SizeRule``.
        trace_shape: the NCHW shape it was traced at.
        narrow: called with a narrower rule; rewrites the file for it and returns its new metadata.
        progress: optional callable receiving one line per shape.
        guards: the capture's ``segdeploy.export.guards.CaptureGuards``: where a guard fails inside the
            rule, the runs also probe there (``suspect_shapes``), and a failing run is explained by them.

    Returns:
        The last ``VerificationReport`` and the rule it verified. A failing run narrows the rule
        (``segdeploy.proof.narrowed_rule``), and the narrowed file is verified again over its own plan;
        after ``NARROWING_ROUNDS`` narrowings the next is the traced size alone. A failure that no
        narrowing leaves out stays a failure.
    """
    from dataclasses import replace

    from segdeploy.proof import narrowed_rule
    from segdeploy.runtime import open_runner
    from segdeploy.threads import fitted_threads
    from segdeploy.verify import verification_plan, verify

    failed: list[Shape] = []
    passed: list[Shape] = []
    for round_ in range(NARROWING_ROUNDS + 2):
        shapes, probes = verification_plan(
            trace_shape, rule.min_size, rule.multiple, rule.max_size, metadata.dynamic_axes
        )
        if guards is not None and rule.fixed is None:
            probes += [s for s in guards.suspect_shapes(rule, trace_shape) if s not in shapes and s not in probes]
        runner = open_runner(path, runtime="ort", precision=metadata.precision)  # a temporary file: name the runtime
        with fitted_threads():  # a busy machine: fewer PyTorch threads run the reference faster
            report = verify(runner, module, shapes=shapes, metadata=metadata, progress=progress, probe_shapes=probes)
        narrower = narrowed_rule(rule, trace_shape, report.results, guards, failed, passed)
        if report.passed or _sizes(narrower) == _sizes(rule):
            return report, rule
        if round_ >= NARROWING_ROUNDS and narrower.fixed is None:
            narrower = replace(narrower, fixed=(trace_shape[2], trace_shape[3]))
        failed += [tuple(r.shape) for r in report.results if not r.passed]
        passed += [tuple(r.shape) for r in report.results if r.passed]
        rule, metadata = narrower, narrow(narrower)
    return report, rule


NARROWING_ROUNDS = 3
"""How many narrower rules are tried before the traced size alone (each is a verification)."""


def _sizes(rule: Any) -> tuple[Any, ...]:
    return rule.multiple, rule.min_size, rule.max_size, rule.fixed


# --------------------------------------------------------------------------- cache -> export / build
def cached_onnx(
    name: str,
    *,
    config: dict[str, Any],
    shape: Shape,
    precision: Precision | str = Precision.FP32,
    num_classes: int = 21,
    opset: int = DEFAULT_OPSET,
    calibration: str | os.PathLike[str] | None = None,
    calib_size: int = 64,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """The zoo model ``name`` exported with dynamic N/H/W: from the cache, or exported into it (unverified).

    Parity is export's and verify's business; a cached file only saves the export time.

    Args:
        calibration, calib_size: INT8 only: the calibration images or ``.npy`` and how many to use.
    """
    from segdeploy.cache import onnx_cache_path
    from segdeploy.export.onnx import build_onnx
    from segdeploy.fileio import atomic_output

    path = onnx_cache_path(
        name, config=config, shape=shape, precision=precision, num_classes=num_classes, opset=opset,
        calibration=calibration, calib_size=calib_size, cache_dir=cache_dir,
    )  # fmt: skip
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        options = ExportOptions(
            shape,
            opset=opset,
            precision=precision,
            spec=ModelSpec(num_classes=num_classes, config=config),
            calibration=Calibration(calibration, calib_size) if calibration is not None else None,
        )
        built = build_onnx(name, options.check())
        with atomic_output(path) as tmp:
            built.write(tmp)
    return path


def cached_engine(
    onnx_path: Path,
    *,
    min_shape: Shape,
    opt_shape: Shape,
    max_shape: Shape,
    precision: Precision | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """An engine built from ``onnx_path`` with this profile, from the cache or built into it.

    Raises:
        MissingDependencyError: TensorRT or a CUDA GPU is missing.
    """
    from segdeploy.cache import engine_cache_path
    from segdeploy.runtime.trt_build import build_engine, read_onnx_facts, require_tensorrt

    trt, gpu = require_tensorrt()
    wanted = parse_precision(precision if precision is not None else read_onnx_facts(onnx_path).precision)
    path = engine_cache_path(
        onnx_path,
        profile=(min_shape, opt_shape, max_shape),
        precision=wanted,
        trt_version=str(trt.__version__),
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        cache_dir=cache_dir,
    )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        build_engine(
            onnx_path, path, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape, precision=wanted.value
        )
    return path


# --------------------------------------------------------------------------- bench -> cache
@dataclass(frozen=True)
class CachedFiles:
    """The bench's exports and engines (``segdeploy.bench.run.BenchFiles``), from the cache in ``cache_dir``."""

    cache_dir: str | os.PathLike[str] | None = None

    def onnx(
        self,
        name: str,
        *,
        config: dict[str, Any],
        shape: Shape,
        precision: Precision,
        num_classes: int,
        opset: int,
        calibration: str | os.PathLike[str] | None,
        calib_size: int,
    ) -> Path:
        return cached_onnx(
            name, config=config, shape=shape, precision=precision, num_classes=num_classes, opset=opset,
            calibration=calibration, calib_size=calib_size, cache_dir=self.cache_dir,
        )  # fmt: skip

    def engine(
        self, onnx_path: Path, *, min_shape: Shape, opt_shape: Shape, max_shape: Shape, precision: Precision | None
    ) -> Path:
        return cached_engine(
            onnx_path,
            min_shape=min_shape,
            opt_shape=opt_shape,
            max_shape=max_shape,
            precision=precision,
            cache_dir=self.cache_dir,
        )


def run_benchmarks(
    models: Sequence[str] = (),
    engines: Sequence[Runtime | str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    **options: Any,
) -> BenchSuite:
    """Benchmark every (model, engine, batch) combination, exporting zoo models and building engines once.

    Args:
        models, engines: as ``segdeploy.bench.run_benchmarks``.
        cache_dir: where exported ONNX and engines are kept (``segdeploy.cache``; default its root).
        options: the other options of ``segdeploy.bench.run_benchmarks`` (shape, batches, precision...).

    Returns:
        A ``BenchSuite``.

    Raises:
        UserInputError, MissingDependencyError: as ``segdeploy.bench.run_benchmarks``.
    """
    from segdeploy.bench import run_benchmarks as run

    return run(models, engines, files=CachedFiles(cache_dir), **options)
