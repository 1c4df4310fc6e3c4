"""Timing loop and latency statistics: what ``segdeploy bench`` measures and how.

Method, in one place:

* CPU engines (torch, ort): ``runner.prepare(batch)`` stages the input, then
  ``warmup`` untimed steps, then each step is timed alone with
  ``time.perf_counter_ns``. The garbage collector is paused during the timed
  loop so that the harness's own allocations do not add pauses.
* TensorRT: the runner's CUDA-event timings of the enqueue alone ("GPU
  compute", as trtexec reports it) are the latency; the end-to-end timings,
  host-to-device and device-to-host copies included, are reported beside them.
* Stopping: after ``iters`` steps, or once ``seconds`` have passed and at least
  ``min_iters`` steps ran; with neither, ``DEFAULT_SECONDS``.
* Percentiles: numpy's default linear interpolation between order statistics
  (``np.percentile(..., method="linear")``); ``std`` is the sample standard
  deviation (ddof=1), 0 for a single sample.
* Peak memory on the CPU: the peak resident set size during warm-up and timed
  loop, minus the resident size just before warm-up, i.e. the working memory
  of inference with the weights already loaded. Linux lets a process reset its
  own high-water mark (``echo 5 > /proc/self/clear_refs``, then ``VmHWM``);
  elsewhere the value is ``None`` rather than a misleading number.
  ``tracemalloc`` would miss native allocations (torch, ORT arenas), and
  ``getrusage`` cannot be reset, so a peak earlier in the process hides this one.
* Peak memory on the GPU: ``torch.cuda.max_memory_allocated`` over the run,
  i.e. what the runner allocates through torch (the I/O buffers); the
  activation memory TensorRT allocates for its execution context is not in it.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.errors import UserInputError
from segdeploy.runtime.base import Runner

ENGINES = ("torch", "ort", "trt")
PRECISIONS = ("fp32", "fp16")
MIN_ITERATIONS = 10
DEFAULT_SECONDS = 3.0
DEFAULT_OPSET = 17

# progress(done, total, what): called before each measurement and once at the end (done == total).
ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class LatencyStats:
    """Summary of latency samples, all in milliseconds; ``n`` is the sample count."""

    mean: float
    min: float
    p50: float
    p90: float
    p99: float
    std: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "min": self.min, "p50": self.p50, "p90": self.p90, "p99": self.p99, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict[str, Any], n: int) -> LatencyStats:
        return cls(**{k: float(data[k]) for k in ("mean", "min", "p50", "p90", "p99")}, std=float(data.get("std", 0.0)), n=n)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Mean, min, p50/p90/p99 (linear interpolation) and sample std of latencies.

    Args:
        samples_ms: one latency per timed step, in milliseconds.

    Returns:
        The statistics; percentiles follow ``np.percentile(method="linear")``.

    Raises:
        ValueError: no samples, or a sample that is not a finite number.
    """
    values = np.asarray(samples_ms, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("latency_stats needs at least one sample")
    if not np.all(np.isfinite(values)):
        raise ValueError("latency samples must be finite numbers")
    p50, p90, p99 = np.percentile(values, [50, 90, 99], method="linear")
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return LatencyStats(
        mean=float(values.mean()),
        min=float(values.min()),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        std=std,
        n=int(values.size),
    )


@dataclass
class BenchRecord:
    """One measurement: a model on one engine, precision and batch size.

    ``latency`` is what throughput and GFLOP/s are computed from: wall-clock
    steps on the CPU, GPU compute (CUDA events) for TensorRT.
    """

    model: str
    engine: str
    precision: str
    batch: int
    shape: tuple[int, ...]
    latency: LatencyStats
    flops_per_image: int | None = None
    peak_memory_mb: float | None = None
    timing: str = "wall"
    gpu_compute: LatencyStats | None = None
    end_to_end: LatencyStats | None = None
    threads: int | None = None

    @property
    def iterations(self) -> int:
        return self.latency.n

    @property
    def throughput(self) -> float:
        """Images per second at the mean latency."""
        return self.batch / (self.latency.mean / 1e3)

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s at the mean latency, ``None`` when the FLOPs are unknown."""
        if self.flops_per_image is None:
            return None
        return self.flops_per_image * self.batch / (self.latency.mean / 1e3) / 1e9

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "model": self.model,
            "engine": self.engine,
            "precision": self.precision,
            "batch": self.batch,
            "shape": list(self.shape),
            "latency_ms": self.latency.to_dict(),
            "throughput": self.throughput,
            "flops_per_image": self.flops_per_image,
            "gflops": self.gflops,
            "peak_memory_mb": self.peak_memory_mb,
            "iterations": self.iterations,
            "timing": self.timing,
            "threads": self.threads,
        }
        if self.gpu_compute is not None:
            data["gpu_compute_ms"] = self.gpu_compute.to_dict()
        if self.end_to_end is not None:
            data["end_to_end_ms"] = self.end_to_end.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchRecord:
        """Read back a record written by ``to_dict`` (e.g. from a results JSON)."""
        n = int(data["iterations"])
        optional = {
            key: LatencyStats.from_dict(data[name], n)
            for key, name in (("gpu_compute", "gpu_compute_ms"), ("end_to_end", "end_to_end_ms"))
            if data.get(name)
        }
        return cls(
            model=data["model"],
            engine=data["engine"],
            precision=data["precision"],
            batch=int(data["batch"]),
            shape=tuple(int(d) for d in data["shape"]),
            latency=LatencyStats.from_dict(data["latency_ms"], n),
            flops_per_image=data.get("flops_per_image"),
            peak_memory_mb=data.get("peak_memory_mb"),
            timing=data.get("timing", "wall"),
            threads=data.get("threads"),
            **optional,
        )


@dataclass
class BenchSuite:
    """All records of one run and the environment they were measured in."""

    records: list[BenchRecord] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"environment": self.environment, "records": [r.to_dict() for r in self.records]}


# --------------------------------------------------------------------------- timing one runner
def benchmark(
    runner: Runner,
    batch: np.ndarray,
    *,
    warmup: int = 10,
    iters: int | None = None,
    seconds: float | None = None,
    flops_per_image: int | None = None,
    min_iters: int = MIN_ITERATIONS,
    cuda_graph: bool = False,
    model: str = "model",
    threads: int | None = None,
) -> BenchRecord:
    """Time ``runner`` on ``batch`` and summarize the latencies.

    Args:
        runner: any ``Runner``; entered (and left) here unless already active.
        batch: float32 NCHW input.
        warmup: untimed steps before timing.
        iters: timed steps; stops the loop when reached.
        seconds: time budget for the timed loop (at least ``min_iters`` steps).
        flops_per_image: FLOPs of one image's forward pass, for GFLOP/s.
        min_iters: the fewest timed steps a ``seconds`` budget may give.
        cuda_graph: TensorRT only: replay the enqueue as a CUDA graph.
        model: the name stored in the record.
        threads: the thread count stored in the record.

    Returns:
        A ``BenchRecord``; ``timing`` says whether latency is wall clock or CUDA events.
    """
    _check_loop_options(warmup, iters, seconds, min_iters)
    if not runner.active:
        with runner:
            return benchmark(
                runner, batch, warmup=warmup, iters=iters, seconds=seconds, flops_per_image=flops_per_image,
                min_iters=min_iters, cuda_graph=cuda_graph, model=model, threads=threads,
            )  # fmt: skip
    common = {
        "model": model,
        "engine": runner.engine,
        "precision": runner.precision,
        "batch": int(batch.shape[0]),
        "shape": tuple(int(d) for d in batch.shape),
        "flops_per_image": flops_per_image,
        "threads": threads,
    }
    if hasattr(runner, "gpu_compute_ms"):
        return _benchmark_gpu(runner, batch, warmup, iters, seconds, min_iters, cuda_graph, common)
    step = runner.prepare(batch)
    with _PeakRss() as peak:
        for _ in range(warmup):
            step()
        samples = _timed_loop(step, iters, seconds, min_iters)
    return BenchRecord(latency=latency_stats(samples), peak_memory_mb=peak.mb, timing="wall", **common)


def _check_loop_options(warmup: int, iters: int | None, seconds: float | None, min_iters: int) -> None:
    if warmup < 0:
        raise UserInputError(f"warm-up must be 0 or more steps, got {warmup}")
    if iters is not None and iters < 1:
        raise UserInputError(f"iterations must be at least 1, got {iters}")
    if seconds is not None and not seconds > 0:
        raise UserInputError(f"seconds must be positive, got {seconds}")
    if min_iters < 1:
        raise UserInputError(f"min_iters must be at least 1, got {min_iters}")


def _timed_loop(step: Callable[[], Any], iters: int | None, seconds: float | None, min_iters: int) -> list[float]:
    if iters is None and seconds is None:
        seconds = DEFAULT_SECONDS
    deadline = None if seconds is None else time.perf_counter_ns() + int(seconds * 1e9)
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            start = time.perf_counter_ns()
            step()
            end = time.perf_counter_ns()
            samples.append((end - start) / 1e6)
            if iters is not None and len(samples) >= iters:
                break
            if deadline is not None and end >= deadline and len(samples) >= min_iters:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def _benchmark_gpu(
    runner: Any,
    batch: np.ndarray,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    min_iters: int,
    cuda_graph: bool,
    common: dict[str, Any],
) -> BenchRecord:
    import torch

    if iters is None:
        # The runner times a fixed count: turn the time budget into one from a short probe.
        budget = DEFAULT_SECONDS if seconds is None else seconds
        probe = runner.gpu_compute_ms(batch, warmup=warmup, iters=min_iters, cuda_graph=cuda_graph)
        iters = max(min_iters, int(budget * 1e3 / max(float(np.mean(probe)), 1e-6)))
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    compute = runner.gpu_compute_ms(batch, warmup=warmup, iters=iters, cuda_graph=cuda_graph)
    end_to_end = runner.end_to_end_ms(batch, warmup=warmup, iters=iters)  # copies included, no graph
    peak_mb = torch.cuda.max_memory_allocated() / 2**20 if on_gpu else None
    compute_stats = latency_stats(compute)
    return BenchRecord(
        latency=compute_stats,
        peak_memory_mb=peak_mb,
        timing="cuda_events",
        gpu_compute=compute_stats,
        end_to_end=latency_stats(end_to_end),
        **common,
    )


class _PeakRss:
    """Peak resident memory during a block, in MiB above the resident size at its start (Linux only).

    RSS-based: memory the allocator reuses from pages freed earlier but still resident
    does not count, so this is a lower bound on what inference needs.
    """

    _CLEAR_REFS = Path("/proc/self/clear_refs")
    _STATUS = Path("/proc/self/status")

    def __init__(self) -> None:
        self.mb: float | None = None
        self._start_kb: int | None = None

    def __enter__(self) -> _PeakRss:
        try:
            self._CLEAR_REFS.write_text("5")  # "5" resets this process's VmHWM to its current RSS
            self._start_kb = self._read_kb("VmRSS")
        except OSError:
            self._start_kb = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._start_kb is None:
            return
        try:
            peak_kb = self._read_kb("VmHWM")
        except OSError:
            return
        self.mb = max(0, peak_kb - self._start_kb) / 1024

    def _read_kb(self, key: str) -> int:
        for line in self._STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
        raise OSError(f"{key} missing from {self._STATUS}")


# --------------------------------------------------------------------------- what to run
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
        suffix = Path(spec).suffix.lower()
        if suffix in (".onnx", ".engine", ".plan"):
            if not Path(spec).is_file():
                raise UserInputError(f"model file {spec} does not exist")
            kind = "onnx" if suffix == ".onnx" else "engine"
            targets.append(BenchTarget(spec, kind, Path(spec).stem))
        else:
            model_info(spec)  # raises with the known names
            targets.append(BenchTarget(spec, "zoo", spec))
    return targets


def default_engines(targets: Sequence[BenchTarget]) -> list[str]:
    """The engines to compare when none are named: torch and ort, ort for ONNX files, trt for engines."""
    kinds = {t.kind for t in targets}
    if kinds == {"engine"}:
        return ["trt"]
    if "onnx" in kinds:
        return ["ort"]
    return ["torch", "ort"]


def check_request(targets: Sequence[BenchTarget], engines: Sequence[str], precision: str) -> None:
    """Refuse impossible combinations before any work starts.

    Raises:
        UserInputError: unknown engine or precision, fp16 on the torch CPU engine,
            an ``.onnx`` with torch, an ``.engine`` with anything but trt.
        MissingDependencyError: trt requested without TensorRT or a CUDA GPU.
    """
    if not engines:
        raise UserInputError(f"name at least one engine ({', '.join(ENGINES)})")
    for engine in engines:
        if engine not in ENGINES:
            raise UserInputError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {precision!r}; choose fp32 or fp16")
    if "torch" in engines and precision == "fp16":
        raise UserInputError(
            "fp16 is not benchmarked on the torch CPU engine (CPU half precision is not what deployments run); "
            "use --engine ort or --engine trt for fp16"
        )
    for target in targets:
        if target.kind == "onnx" and "torch" in engines:
            raise UserInputError(f"{target.spec} is an ONNX file: the torch engine needs a zoo model name")
        if target.kind == "engine" and set(engines) != {"trt"}:
            raise UserInputError(f"{target.spec} is a TensorRT engine: it runs only with --engine trt")
    if "trt" in engines:
        from segdeploy.runtime.trt_build import require_tensorrt

        require_tensorrt()


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where exported ONNX files and built engines are kept: ``cache_dir``, ``$SEGDEPLOY_CACHE`` or ``~/.cache/segdeploy``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SEGDEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "segdeploy"


def cached_onnx_path(
    name: str, *, config: dict[str, Any], precision: str, opset: int = DEFAULT_OPSET, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """``<cache>/onnx/<name>-<opset>-<precision>-<hash>.onnx``; the hash covers the config and ``export_fingerprint()``."""
    key = json.dumps({"config": config, "export": export_fingerprint()}, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root(cache_dir) / "onnx" / f"{name}-{opset}-{precision}-{digest}.onnx"


@functools.lru_cache(maxsize=1)
def export_fingerprint() -> str:
    """A digest of what decides an exported file: segdeploy's model and export code and the exporters' versions.

    The version string alone would keep serving a stale file to anyone editing a
    model or a rewrite in a checkout; hashing the sources costs a few milliseconds.
    """
    from importlib import metadata

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    sources = [package / "precision.py", *sorted((package / "models").rglob("*.py")), *sorted((package / "export").rglob("*.py"))]
    for source in sources:
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    for dist in ("torch", "onnx", "onnxscript", "onnxsim", "onnxconverter-common"):
        try:
            digest.update(f"{dist}={metadata.version(dist)}\0".encode())
        except metadata.PackageNotFoundError:
            digest.update(f"{dist}=none\0".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- a whole run
def run_benchmarks(
    models: Sequence[str] = (),
    engines: Sequence[str] | None = None,
    *,
    shape: tuple[int, int, int, int] = (1, 3, 512, 512),
    batches: Sequence[int] | None = None,
    precision: str = "fp32",
    warmup: int = 10,
    iters: int | None = None,
    seconds: float | None = None,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
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
        engines: any of ``torch``, ``ort``, ``trt``, in the order the table compares them;
            None picks ``default_engines``.
        shape: ``NxCxHxW``; N is the batch unless ``batches`` is given.
        batches: batch sizes to run.
        precision: ``fp32`` or ``fp16`` (not on torch).
        warmup, iters, seconds: see ``benchmark``.
        threads: intra-op threads for torch and ONNX Runtime alike; default torch's current count.
        cache_dir: where exported ONNX and engines are kept (see ``cache_root``).
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
    _check_loop_options(warmup, iters, seconds, MIN_ITERATIONS)
    targets = resolve_targets(models)
    engines = list(engines) if engines else default_engines(targets)
    check_request(targets, engines, precision)

    import torch

    threads = int(threads or torch.get_num_threads())
    if threads < 1:
        raise UserInputError(f"threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)
    records: list[BenchRecord] = []
    total = len(targets) * len(engines) * len(batch_sizes)
    rng = np.random.default_rng(0)
    for target in targets:
        config = _zoo_config(target, model_config, small)
        if target.kind == "zoo":
            _check_zoo_shape(target.name, shape)
        flops = _flops_per_image(target, config, shape, num_classes)
        for engine in engines:
            if progress:
                progress(len(records), total, f"{target.name} {engine}: preparing")
            source = _engine_source(target, engine, config, shape, batch_sizes, precision, num_classes, cache_dir, opset)
            runner = _open_runner(source, engine, precision, threads)
            with runner:
                for batch in batch_sizes:
                    if progress:
                        progress(len(records), total, f"{target.name} {engine} batch {batch}")
                    data = rng.standard_normal((batch, *shape[1:]), dtype=np.float32)
                    records.append(
                        benchmark(
                            runner, data, warmup=warmup, iters=iters, seconds=seconds, flops_per_image=flops,
                            cuda_graph=cuda_graph, model=target.name, threads=threads,
                        )  # fmt: skip
                    )
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


def _flops_per_image(target: BenchTarget, config: dict[str, Any], shape: tuple[int, ...], num_classes: int) -> int | None:
    if target.kind != "zoo":
        return None  # a bare ONNX file or engine: no module to count on
    import torch

    from segdeploy.models import create_model
    from segdeploy.models.summary import count_flops

    with torch.device("meta"):
        module = create_model(target.name, num_classes=num_classes, in_channels=shape[1], **config)
    return count_flops(module, (1, *shape[1:]))


def _engine_source(
    target: BenchTarget,
    engine: str,
    config: dict[str, Any],
    shape: tuple[int, int, int, int],
    batch_sizes: Sequence[int],
    precision: str,
    num_classes: int,
    cache_dir: str | os.PathLike[str] | None,
    opset: int,
) -> Any:
    """What the runner loads: an ``nn.Module`` for torch, an ONNX path for ort, an engine path for trt."""
    if engine == "torch":
        from segdeploy.models.loading import load_model

        return load_model(target.name, num_classes=num_classes, in_channels=shape[1], **config).module
    if target.kind == "engine":
        return target.path
    onnx_path = target.path if target.kind == "onnx" else export_cached(target.name, config, shape, precision, num_classes, cache_dir, opset)
    if engine == "ort":
        return onnx_path
    return _build_cached_engine(onnx_path, shape, batch_sizes, precision, cache_dir)


def zoo_onnx_path(
    name: str,
    config: dict[str, Any],
    *,
    in_channels: int = 3,
    precision: str = "fp32",
    num_classes: int = 21,
    cache_dir: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Where ``export_cached`` keeps the zoo model ``name`` built with ``config``."""
    full_config = {"model": name, "num_classes": num_classes, "in_channels": in_channels, **config}
    return cached_onnx_path(name, config=full_config, precision=precision, opset=opset, cache_dir=cache_dir)


def export_cached(
    name: str,
    config: dict[str, Any],
    shape: tuple[int, int, int, int],
    precision: str = "fp32",
    num_classes: int = 21,
    cache_dir: str | os.PathLike[str] | None = None,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """The zoo model ``name`` exported with dynamic N/H/W, from the cache or exported into it.

    Returns:
        The path of the ONNX file (see ``zoo_onnx_path``).
    """
    from segdeploy.export.onnx import export_onnx

    path = zoo_onnx_path(
        name, config, in_channels=shape[1], precision=precision, num_classes=num_classes, cache_dir=cache_dir, opset=opset
    )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        # parity is export's and verify's business; the benchmark only needs the file
        export_onnx(
            name, path, input_shape=shape, opset=opset, dynamic=True, precision=precision, verify=False,
            num_classes=num_classes, in_channels=shape[1], config=config,
        )  # fmt: skip
    return path


def _build_cached_engine(
    onnx_path: Path,
    shape: tuple[int, int, int, int],
    batch_sizes: Sequence[int],
    precision: str,
    cache_dir: str | os.PathLike[str] | None,
) -> Path:
    from segdeploy.runtime.trt_build import build_engine

    profile = (min(batch_sizes), max(batch_sizes), *shape[1:])
    digest = hashlib.sha256(f"{onnx_path.resolve()}:{onnx_path.stat().st_mtime_ns}:{profile}".encode()).hexdigest()[:12]
    engine_path = cache_root(cache_dir) / "engines" / f"{onnx_path.stem}-{precision}-{digest}.engine"
    if not engine_path.is_file():
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        c, h, w = shape[1:]
        build_engine(
            onnx_path, engine_path,
            min_shape=(min(batch_sizes), c, h, w), opt_shape=(max(batch_sizes), c, h, w),
            max_shape=(max(batch_sizes), c, h, w), precision=precision,
        )  # fmt: skip
    return engine_path


def _open_runner(source: Any, engine: str, precision: str, threads: int) -> Runner:
    from segdeploy.runtime import open_runner

    return open_runner(source, engine=engine, precision=precision, threads=threads)


def _environment(threads: int) -> dict[str, Any]:
    try:
        from segdeploy.environment import collect_environment
    except ImportError:  # environment.py is optional to the bench: keep the essentials
        import platform

        environment: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    else:
        environment = dict(collect_environment())
    environment["bench_threads"] = threads
    return environment
