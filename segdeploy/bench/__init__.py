"""Benchmarks: statistics (``stats``), timing one runner (``measure``), whole runs (``run``; from the cache:
``segdeploy.pipeline.run_benchmarks``)."""

from __future__ import annotations

from segdeploy.bench.measure import benchmark, check_loop_options
from segdeploy.bench.run import (
    BenchFiles,
    BenchTarget,
    check_request,
    default_engines,
    resolve_targets,
    run_benchmarks,
    torch_threads,
)
from segdeploy.bench.stats import BenchRecord, BenchSuite, LatencyStats, latency_stats

__all__ = [
    "BenchFiles", "BenchRecord", "BenchSuite", "BenchTarget", "LatencyStats", "benchmark", "check_loop_options",
    "check_request", "default_engines", "latency_stats", "resolve_targets", "run_benchmarks", "torch_threads",
]  # fmt: skip
