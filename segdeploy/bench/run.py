"""A whole benchmark run: what to run (zoo names, ONNX files, engines), on which engines, batch sizes, in order."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from segdeploy.artifact import (
    DEFAULT_OPSET,
    ONNX_SUFFIX,
    Precision,
    Runtime,
    is_engine_path,
    parse_choice,
    parse_precision,
)
from segdeploy.bench.measure import benchmark, check_loop_options
from segdeploy.bench.stats import BenchRecord, BenchSuite
from segdeploy.errors import UserInputError
from segdeploy.runtime.base import MIN_ITERATIONS
from segdeploy.shapes import Shape

# progress(done, total, what): called before each measurement and once at the end (done == total).
ProgressCallback = Callable[[int, int, str], None]


class BenchFiles(Protocol):
    """Where the bench gets the files it times (``segdeploy.pipeline.CachedFiles``: from the cache)."""

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
        """Zoo model ``name`` exported with dynamic N/H/W at these settings."""
        ...

    def engine(
        self, onnx_path: Path, *, min_shape: Shape, opt_shape: Shape, max_shape: Shape, precision: Precision | None
    ) -> Path:
        """A TensorRT engine built from ``onnx_path`` with this profile (precision None: the file's own)."""
        ...


@dataclass(frozen=True)
class BenchTarget:
    """One MODEL argument resolved: a zoo name, an ONNX file or a TensorRT engine."""

    spec: str
    kind: str  # "zoo" | "onnx" | "engine"
    name: str

    @property
    def path(self) -> Path:
        return Path(self.spec)


def resolve_targets(models: Sequence[str]) -> list[BenchTarget]:
    """Turn MODEL arguments into targets; no arguments means every zoo model.

    Raises:
        UserInputError: a missing file or an unknown zoo name.
    """
    from segdeploy.models import list_models, model_info

    if not models:
        return [BenchTarget(name, "zoo", name) for name in list_models()]
    targets = []
    for spec in models:
        if Path(spec).suffix.lower() == ONNX_SUFFIX or is_engine_path(spec):
            if not Path(spec).is_file():
                raise UserInputError(f"model file {spec} does not exist")
            kind = "onnx" if Path(spec).suffix.lower() == ONNX_SUFFIX else "engine"
            targets.append(BenchTarget(spec, kind, Path(spec).stem))
        else:
            model_info(spec)  # raises with the known names
            targets.append(BenchTarget(spec, "zoo", spec))
    return targets


def default_engines(targets: Sequence[BenchTarget]) -> list[Runtime]:
    """The engines to compare when none are named: torch and ort, ort for ONNX files, trt for engines."""
    kinds = {t.kind for t in targets}
    if kinds == {"engine"}:
        return [Runtime.TRT]
    if "onnx" in kinds:
        return [Runtime.ORT]
    return [Runtime.TORCH, Runtime.ORT]


QUANTIZED = (Precision.INT8, Precision.INT8_FP16)


def check_request(
    targets: Sequence[BenchTarget],
    engines: Sequence[Runtime | str],
    precision: Precision | str | None,
    calibration: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse impossible combinations before any work starts.

    Args:
        precision: the precision zoo models are exported at; None: fp32 for zoo models, and files keep their own.
        calibration: INT8 calibration data for zoo exports.

    Raises:
        UserInputError: unknown engine or precision, fp16 on the torch CPU engine, a precision asked of
            ``.onnx`` or ``.engine`` files (theirs is in the file), INT8 without calibration data or
            calibration data without INT8, an ``.onnx`` with torch, an ``.engine`` with anything but trt.
        MissingDependencyError: trt requested without TensorRT or a CUDA GPU.
    """
    if not engines:
        raise UserInputError(f"name at least one engine ({', '.join(e.value for e in Runtime)})")
    chosen = [parse_choice(Runtime, e, "engine") for e in engines]
    files = [t for t in targets if t.kind != "zoo"]
    if precision is not None and files:
        raise UserInputError(
            f"--precision is for zoo models (exported at that precision); {files[0].spec} carries its own "
            "precision, read from the file"
        )
    precision = parse_precision(precision or Precision.FP32)
    if precision in QUANTIZED and calibration is None and any(t.kind == "zoo" for t in targets):
        raise UserInputError(
            f"--precision {precision.value} exports zoo models with INT8 Q/DQ, which needs calibration data: "
            "pass --calib DIR_OF_IMAGES or --calib BATCHES.npy"
        )
    if calibration is not None and precision not in QUANTIZED:
        raise UserInputError(f"--calib is for --precision int8 or int8-fp16, not {precision.value}")
    if calibration is not None and not Path(calibration).exists():
        raise UserInputError(f"calibration data {calibration} does not exist")
    if Runtime.TORCH in chosen and precision is not Precision.FP32:
        raise UserInputError(
            f"{precision.value} is not benchmarked on the torch CPU engine (CPU half precision is not what "
            "deployments run); use --engine ort or --engine trt"
        )
    for target in targets:
        if target.kind == "onnx" and Runtime.TORCH in chosen:
            raise UserInputError(f"{target.spec} is an ONNX file: the torch engine needs a zoo model name")
        if target.kind == "engine" and set(chosen) != {Runtime.TRT}:
            raise UserInputError(f"{target.spec} is a TensorRT engine: it runs only with --engine trt")
    if Runtime.TRT in chosen:
        from segdeploy.runtime.trt_build import require_tensorrt

        require_tensorrt()


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count for a run and restore it afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_benchmarks(
    models: Sequence[str] = (),
    engines: Sequence[Runtime | str] | None = None,
    *,
    files: BenchFiles,
    shape: tuple[int, int, int, int] = (1, 3, 512, 512),
    batches: Sequence[int] | None = None,
    precision: Precision | str | None = None,
    calibration: str | os.PathLike[str] | None = None,
    calib_size: int = 64,
    warmup: int = 10,
    iters: int | None = None,
    seconds: float | None = None,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    model_config: dict[str, Any] | None = None,
    small: bool = False,
    num_classes: int = 21,
    cuda_graph: bool = False,
    opset: int = DEFAULT_OPSET,
) -> BenchSuite:
    """Benchmark every (model, engine, batch) combination side by side.

    Args:
        models: zoo names, ``.onnx`` files or ``.engine`` files; empty means every zoo model.
        engines: ``torch``, ``ort``, ``trt``, in the order the table compares them; None picks ``default_engines``.
        files: where zoo models' exports and engines come from (``segdeploy.pipeline.run_benchmarks`` passes
            the cache's).
        shape: ``NxCxHxW``; N is the batch unless ``batches`` is given.
        batches: batch sizes to run.
        precision: what zoo models are exported at: ``fp32`` (default), ``fp16``, ``int8``... (not on torch).
            ``.onnx`` and ``.engine`` files run at their own precision, read from the file.
        calibration, calib_size: INT8 zoo exports: a directory of images or an ``.npy`` of batches, and how
            many images to use.
        warmup, iters, seconds: see ``segdeploy.bench.measure.benchmark``.
        threads: intra-op threads for torch and ONNX Runtime alike, restored afterwards; default torch's count.
        progress: ``progress(done, total, what)`` callback.
        model_config: builder options for zoo models (e.g. ``{"width_mult": 0.25}``).
        small: use each zoo model's ``test_config`` (fast smoke runs); ``model_config`` overrides it.
        num_classes: output classes of zoo models.
        cuda_graph: TensorRT: time CUDA-graph replays.
        opset: ONNX opset for on-the-fly exports.

    Returns:
        A ``BenchSuite`` with one record per combination and the environment.

    Raises:
        UserInputError: bad shape, batch, model, engine or combination (before any work).
        MissingDependencyError: trt without TensorRT or a GPU (before any work).
    """
    from segdeploy.shapes import check_shape

    check_shape(shape)
    batch_sizes = [int(b) for b in (batches or [shape[0]])]
    if any(b < 1 for b in batch_sizes):
        raise UserInputError(f"batch sizes must be positive, got {batch_sizes}")
    check_loop_options(warmup, iters, seconds, MIN_ITERATIONS)
    targets = resolve_targets(models)
    chosen = [parse_choice(Runtime, e, "engine") for e in engines] if engines else default_engines(targets)
    check_request(targets, chosen, precision, calibration)
    precision = parse_precision(precision or Precision.FP32)

    import torch

    threads = int(threads or torch.get_num_threads())
    if threads < 1:
        raise UserInputError(f"threads must be at least 1, got {threads}")
    records: list[BenchRecord] = []
    total = len(targets) * len(chosen) * len(batch_sizes)
    rng = np.random.default_rng(0)
    with torch_threads(threads):
        for target in targets:
            config = _zoo_config(target, model_config, small)
            if target.kind == "zoo":
                _check_zoo_shape(target.name, shape)
            elif target.kind == "onnx":
                from segdeploy.artifact import read_metadata

                read_metadata(target.path).check_size(shape)
            flops = _flops_per_image(target, config, shape, num_classes)
            for engine in chosen:
                if progress:
                    progress(len(records), total, f"{target.name} {engine.value}: preparing")
                source = _engine_source(
                    target, engine, config, shape, batch_sizes, precision, num_classes, files, opset,
                    calibration, calib_size,
                )  # fmt: skip
                # A file runs at its own precision: the runner reads it from the metadata or sidecar.
                label = precision if target.kind == "zoo" else None
                with _open_runner(source, engine, label, threads) as runner:
                    for batch in batch_sizes:
                        if progress:
                            progress(len(records), total, f"{target.name} {engine.value} batch {batch}")
                        data = runner.input_spec.random_batch((batch, *shape[1:]), rng)
                        records.append(benchmark(
                            runner, data, warmup=warmup, iters=iters, seconds=seconds, flops_per_image=flops,
                            cuda_graph=cuda_graph, model=target.name, threads=threads,
                        ))  # fmt: skip
    if progress:
        progress(total, total, "done")
    return BenchSuite(records=records, environment=_environment(threads))


def _zoo_config(target: BenchTarget, model_config: dict[str, Any] | None, small: bool) -> dict[str, Any]:
    if target.kind != "zoo":
        return {}
    from segdeploy.models import model_info

    config = dict(model_info(target.name).test_config) if small else {}
    config.update(model_config or {})
    return config


def _check_zoo_shape(name: str, shape: tuple[int, int, int, int]) -> None:
    from segdeploy.models import model_info
    from segdeploy.shapes import check_shape

    check_shape(shape, min_size=model_info(name).min_size)


def _flops_per_image(
    target: BenchTarget, config: dict[str, Any], shape: tuple[int, ...], num_classes: int
) -> int | None:
    if target.kind != "zoo":
        return None  # a bare ONNX file or engine: no module to count on
    import torch

    from segdeploy.models import create_model
    from segdeploy.models.summary import count_flops

    with torch.device("meta"):
        module = create_model(target.name, num_classes=num_classes, in_channels=shape[1], **config)
    return count_flops(module, (1, *shape[1:]))


def _engine_source(
    target: BenchTarget, engine: Runtime, config: dict[str, Any], shape: tuple[int, int, int, int],
    batch_sizes: Sequence[int], precision: Precision, num_classes: int, files: BenchFiles, opset: int,
    calibration: Any = None, calib_size: int = 64,
) -> Any:  # fmt: skip
    """What the runner loads: an ``nn.Module`` for torch, an ONNX path for ort, an engine path for trt."""
    if engine is Runtime.TORCH:
        from segdeploy.models.loading import load_model

        return load_model(target.name, num_classes=num_classes, in_channels=shape[1], **config).module
    if target.kind == "engine":
        return target.path
    if target.kind == "onnx":
        onnx_path = target.path
    else:
        onnx_path = files.onnx(
            target.name,
            config=config,
            shape=shape,
            precision=precision,
            num_classes=num_classes,
            opset=opset,
            calibration=calibration,
            calib_size=calib_size,
        )
    if engine is Runtime.ORT:
        return onnx_path
    c, h, w = shape[1:]
    lo, hi = min(batch_sizes), max(batch_sizes)
    return files.engine(
        onnx_path,
        min_shape=(lo, c, h, w),
        opt_shape=(hi, c, h, w),
        max_shape=(hi, c, h, w),
        precision=precision if target.kind == "zoo" else None,
    )


def _open_runner(source: Any, engine: Runtime, precision: Precision | None, threads: int) -> Any:
    from segdeploy.runtime import open_runner

    return open_runner(source, runtime=engine, precision=precision, threads=threads)


def _environment(threads: int) -> dict[str, Any]:
    from segdeploy.environment import collect_environment

    environment = dict(collect_environment())
    environment["bench_threads"] = threads
    return environment
