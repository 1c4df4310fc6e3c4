"""Timing one runner on one batch, and what it holds in memory meanwhile.

The runner measures itself (``Runner.measure``, part of the runner contract):
CPU engines time each step with ``time.perf_counter_ns`` after warm-up, with
the garbage collector paused; TensorRT times the enqueue alone with CUDA
events ("GPU compute", as trtexec reports it) and the end-to-end step,
copies included, beside it. Stopping: after ``iters`` steps, or once
``seconds`` have passed and at least ``min_iters`` steps ran; with neither,
3 seconds.

Peak memory on the CPU is the peak resident set size during warm-up and timed
loop, minus the resident size just before: the working memory of inference
with the weights already loaded. Linux lets a process reset its own
high-water mark (``echo 5 > /proc/self/clear_refs``, then ``VmHWM``);
elsewhere the value is ``None`` rather than a misleading number.
``tracemalloc`` would miss native allocations (torch, ORT arenas), and
``getrusage`` cannot be reset. On the GPU it is ``torch.cuda.max_memory_allocated``
over the run: the I/O buffers the runner allocates through torch, not the
activation memory TensorRT allocates for its execution context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.bench.stats import BenchRecord, latency_stats
from segdeploy.errors import UserInputError
from segdeploy.runtime.base import MIN_ITERATIONS, Runner


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
        batch: an input in the runner's format.
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
    check_loop_options(warmup, iters, seconds, min_iters)
    if not runner.is_active:
        with runner:
            return benchmark(
                runner, batch, warmup=warmup, iters=iters, seconds=seconds, flops_per_image=flops_per_image,
                min_iters=min_iters, cuda_graph=cuda_graph, model=model, threads=threads,
            )  # fmt: skip
    options = {"warmup": warmup, "iters": iters, "seconds": seconds, "min_iters": min_iters, "cuda_graph": cuda_graph}
    if runner.timing == "cuda_events":
        with _PeakCuda() as peak:
            measured = runner.measure(batch, **options)
    else:
        with _PeakRss() as peak:
            measured = runner.measure(batch, **options)
    return BenchRecord(
        model=model,
        engine=runner.runtime.value,
        precision=runner.precision.value,
        batch=int(batch.shape[0]),
        shape=tuple(int(d) for d in batch.shape),
        latency=latency_stats(measured.latency_ms),
        flops_per_image=flops_per_image,
        peak_memory_mb=peak.mb,
        timing=measured.timing,
        gpu_compute=latency_stats(measured.gpu_compute_ms) if measured.gpu_compute_ms else None,
        end_to_end=latency_stats(measured.end_to_end_ms) if measured.end_to_end_ms else None,
        threads=threads,
    )


def check_loop_options(warmup: int, iters: int | None, seconds: float | None, min_iters: int) -> None:
    """Refuse loop settings that cannot time anything.

    Raises:
        UserInputError: a negative warm-up, fewer than one iteration, a non-positive budget.
    """
    if warmup < 0:
        raise UserInputError(f"warm-up must be 0 or more steps, got {warmup}")
    if iters is not None and iters < 1:
        raise UserInputError(f"iterations must be at least 1, got {iters}")
    if seconds is not None and not seconds > 0:
        raise UserInputError(f"seconds must be positive, got {seconds}")
    if min_iters < 1:
        raise UserInputError(f"min_iters must be at least 1, got {min_iters}")


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


class _PeakCuda:
    """Peak memory torch allocated on the GPU during a block, in MiB."""

    def __init__(self) -> None:
        self.mb: float | None = None

    def __enter__(self) -> _PeakCuda:
        import torch

        self._on_gpu = torch.cuda.is_available()
        if self._on_gpu:
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self._on_gpu:
            self.mb = torch.cuda.max_memory_allocated() / 2**20
