"""Latency statistics and the records a benchmark keeps.

Percentiles follow numpy's default linear interpolation between order statistics
(``np.percentile(..., method="linear")``); ``std`` is the sample standard deviation
(ddof=1), 0 for a single sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


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
        values = {k: float(data[k]) for k in ("mean", "min", "p50", "p90", "p99")}
        return cls(**values, std=float(data.get("std", 0.0)), n=n)


def latency_stats(samples_ms: Sequence[float]) -> LatencyStats:
    """Mean, min, p50/p90/p99 (linear interpolation) and sample std of latencies.

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
        float(values.mean()), float(values.min()), float(p50), float(p90), float(p99), std, int(values.size)
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
