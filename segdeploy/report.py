"""Benchmark results as a rich table, JSON, CSV, Markdown and a bar plot.

Every writer goes through ``segdeploy.fileio``: a file appears complete or not at all.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy.errors import MissingDependencyError, UserInputError
from segdeploy.fileio import atomic_output, check_output_path, write_text_atomic

if TYPE_CHECKING:
    from rich.table import Table

    from segdeploy.bench import BenchRecord, BenchSuite

CSV_COLUMNS = (
    "model", "engine", "precision", "batch", "shape", "mean_ms", "min_ms", "p50_ms", "p90_ms", "p99_ms",
    "images_per_s", "gflops", "speedup", "flops_per_image", "peak_memory_mb", "iterations", "timing",
)  # fmt: skip


_PLOT_FORMATS = ("png", "svg", "pdf")


def speedups(records: Sequence[BenchRecord]) -> list[float]:
    """Each record's speed-up over the first record of the same model, shape, batch and precision.

    The first engine listed is the baseline (1.0); a value above 1 means faster
    than it, computed from mean latencies.
    """
    baselines: dict[tuple[Any, ...], float] = {}
    result = []
    for record in records:
        key = (record.model, tuple(record.shape), record.batch, record.precision)
        baseline = baselines.setdefault(key, record.latency.mean)
        result.append(baseline / record.latency.mean)
    return result


def rows(records: Sequence[BenchRecord]) -> list[dict[str, Any]]:
    """Flat rows (the CSV columns) in record order, with the speed-up column filled in."""
    from segdeploy.shapes import format_shape

    out = []
    for record, speedup in zip(records, speedups(records)):
        lat = record.latency
        out.append(
            {
                "model": record.model,
                "engine": record.engine,
                "precision": record.precision,
                "batch": record.batch,
                "shape": format_shape(record.shape),
                "mean_ms": lat.mean,
                "min_ms": lat.min,
                "p50_ms": lat.p50,
                "p90_ms": lat.p90,
                "p99_ms": lat.p99,
                "images_per_s": record.throughput,
                "gflops": record.gflops,
                "speedup": speedup,
                "flops_per_image": record.flops_per_image,
                "peak_memory_mb": record.peak_memory_mb,
                "iterations": record.iterations,
                "timing": record.timing,
            }
        )
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# columns shown in the table and Markdown: (header, row key, digits)
_SHOWN = (
    ("model", "model", 0), ("engine", "engine", 0), ("precision", "precision", 0), ("batch", "batch", 0),
    ("mean ms", "mean_ms", 2), ("p50 ms", "p50_ms", 2), ("p90 ms", "p90_ms", 2), ("p99 ms", "p99_ms", 2),
    ("images/s", "images_per_s", 1), ("GFLOP/s", "gflops", 1), ("speed-up", "speedup", 2),
)  # fmt: skip


def _shown_cells(row: dict[str, Any]) -> list[str]:
    cells = []
    for _, key, digits in _SHOWN:
        text = _fmt(row[key], digits)
        cells.append(text + "x" if key == "speedup" and row[key] is not None else text)
    return cells


def render_table(records: Sequence[BenchRecord], title: str | None = None) -> Table:
    """A rich table: latencies, images/s, GFLOP/s and the speed-up over the first engine."""
    from rich.table import Table

    table = Table(title=title)
    for header, key, _ in _SHOWN:
        table.add_column(header, justify="left" if key in ("model", "engine", "precision") else "right")
    for row in rows(records):
        table.add_row(*_shown_cells(row))
    return table


def markdown_table(records: Sequence[BenchRecord]) -> str:
    """The table's columns as a GitHub Markdown table (ends with a newline)."""
    headers = [header for header, _, _ in _SHOWN]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if i < 3 else "---:" for i in range(len(headers))) + "|",
    ]
    lines += ["| " + " | ".join(_shown_cells(row)) + " |" for row in rows(records)]
    return "\n".join(lines) + "\n"


def csv_text(records: Sequence[BenchRecord]) -> str:
    """All ``CSV_COLUMNS`` with full precision; empty cells for unknown values."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows(records):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buffer.getvalue()


def write_json(suite: BenchSuite, path: str | os.PathLike[str]) -> Path:
    """``{"environment": {...}, "records": [...]}`` with indentation, atomically."""
    return write_text_atomic(path, json.dumps(suite.to_dict(), indent=2) + "\n")


def write_csv(records: Sequence[BenchRecord], path: str | os.PathLike[str]) -> Path:
    """``csv_text(records)`` written atomically."""
    return write_text_atomic(path, csv_text(records))


def check_plot_target(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that ``plot`` can write ``path``.

    Raises:
        UserInputError: not a .png, .svg or .pdf name.
        MissingDependencyError: matplotlib is not installed.
    """
    target = check_output_path(path)
    if target.suffix.lstrip(".").lower() not in _PLOT_FORMATS:
        raise UserInputError(f"cannot plot to {target}: use a .png, .svg or .pdf file name")
    _pyplot()
    return target


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'segdeploy[plot]'") from None
    return plt


def plot(records: Sequence[BenchRecord], path: str | os.PathLike[str]) -> Path:
    """Grouped bars of mean latency: one group per model (and batch), one bar per engine.

    Whiskers reach from the minimum to p99 so tail latency is visible next to the mean.

    Raises:
        MissingDependencyError: matplotlib is not installed.
        UserInputError: ``path`` is not a .png, .svg or .pdf file.
    """
    target = check_plot_target(path)
    plt = _pyplot()
    multi_batch = len({r.batch for r in records}) > 1
    groups = list(dict.fromkeys(f"{r.model} b{r.batch}" if multi_batch else r.model for r in records))
    series = list(dict.fromkeys(f"{r.engine}-{r.precision}" for r in records))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * max(len(series), 1) / 2 + 2), 4.5))
    for i, label in enumerate(series):
        xs, means, low, high = [], [], [], []
        for record in records:
            if f"{record.engine}-{record.precision}" != label:
                continue
            group = f"{record.model} b{record.batch}" if multi_batch else record.model
            lat = record.latency
            xs.append(groups.index(group) + (i - (len(series) - 1) / 2) * width)
            means.append(lat.mean)
            low.append(lat.mean - lat.min)
            high.append(max(lat.p99 - lat.mean, 0.0))
        ax.bar(xs, means, width, label=label, yerr=[low, high], capsize=3)
    ax.set_xticks(
        range(len(groups)), groups, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
    )
    ax.set_ylabel("latency, ms (mean; whiskers min to p99)")
    ax.set_title("segdeploy bench: latency per engine")
    ax.legend()
    return save_figure(fig, target)


def save_figure(fig: Any, target: Path) -> Path:
    """Write a matplotlib figure atomically in the format its suffix names, then close it."""
    plt = _pyplot()
    fig.tight_layout()
    try:
        with atomic_output(target) as tmp:
            fig.savefig(tmp, format=target.suffix.lstrip(".").lower(), dpi=120)
    finally:
        plt.close(fig)
    return target
