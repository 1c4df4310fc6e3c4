"""The bench command: engines side by side."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from segdeploy.artifact import Precision, Runtime
from segdeploy.cli.common import (
    CalibOption,
    CalibSizeOption,
    ConfigOption,
    JsonFlag,
    ReportOption,
    app,
    guarded,
    make_console,
    parse_config,
    print_json,
)
from segdeploy.errors import UserInputError


# --------------------------------------------------------------------------- bench
def _parse_batches(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        batches = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        batches = []
    if not batches or any(b < 1 for b in batches):
        raise UserInputError(f"bad --batch {text!r}: expected positive integers separated by commas, e.g. 1,4,8")
    return batches


@app.command("bench")
@guarded
def bench_cmd(
    model: Annotated[
        Optional[str], typer.Argument(help="Zoo name, .onnx or .engine file; omit to run every zoo model.")
    ] = None,
    engine: Annotated[
        Optional[list[Runtime]],
        typer.Option("--engine", "-e", case_sensitive=False, help="Repeat to compare (default torch and ort)."),
    ] = None,
    shape: Annotated[
        str, typer.Option(help="Input shape NxCxHxW; N is the batch unless --batch is given.")
    ] = "1x3x512x512",
    batch: Annotated[Optional[str], typer.Option("--batch", help="Batch sizes, comma-separated, e.g. 1,4,8.")] = None,
    precision: Annotated[
        Optional[Precision],
        typer.Option(
            case_sensitive=False,
            help="Precision zoo models are exported at (default fp32; fp16 and int8: ort and trt only). "
            "Files run at their own.",
        ),
    ] = None,
    calib: CalibOption = None,
    calib_size: CalibSizeOption = 64,
    config: ConfigOption = None,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps.")] = 10,
    iters: Annotated[Optional[int], typer.Option(help="Timed steps (instead of --seconds).")] = None,
    seconds: Annotated[
        Optional[float], typer.Option(help="Time budget per measurement, at least 10 steps (default 3).")
    ] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch and ONNX Runtime alike.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="TensorRT: time CUDA-graph replays.")] = False,
    small: Annotated[
        bool, typer.Option("--small", help="Zoo models in their small test configuration (smoke runs).")
    ] = False,
    as_json: JsonFlag = False,
    report_path: ReportOption = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the records as CSV.")] = None,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print a Markdown table instead of the rich table.")
    ] = False,
    plot_path: Annotated[
        Optional[Path], typer.Option("--plot", help="Save a latency bar chart (.png/.svg/.pdf; needs matplotlib).")
    ] = None,
) -> None:
    """Benchmark engines side by side: latency percentiles, images/s, GFLOP/s, speed-up.

    --json prints the records and the environment as JSON on stdout; --report PATH writes them to a file.
    """
    from segdeploy import report
    from segdeploy.pipeline import run_benchmarks
    from segdeploy.shapes import parse_shape

    input_shape = parse_shape(shape)
    batches = _parse_batches(batch)
    if iters is not None and seconds is not None:
        raise UserInputError("give --iters or --seconds, not both")
    if as_json and markdown:
        raise UserInputError("give --json or --markdown, not both")
    for path in (report_path, csv_path):
        if path is not None:
            report.check_output_path(path)
    if plot_path is not None:
        report.check_plot_target(plot_path)
    with _BenchProgress() as progress:
        suite = run_benchmarks(
            [model] if model else [], engine or None, shape=input_shape, batches=batches, precision=precision,
            calibration=calib, calib_size=calib_size, warmup=warmup, iters=iters, seconds=seconds, threads=threads,
            progress=progress, small=small,
            cuda_graph=cuda_graph, model_config=parse_config(config),
        )  # fmt: skip
    if as_json:
        print_json(suite.to_dict())
    elif markdown:
        typer.echo(report.markdown_table(suite.records), nl=False)
    else:
        make_console().print(report.render_table(suite.records, title="segdeploy bench (latency in ms)"))
    if report_path is not None:
        report.write_json(suite, report_path)
    if csv_path is not None:
        report.write_csv(suite.records, csv_path)
    if plot_path is not None:
        report.plot(suite.records, plot_path)


class _BenchProgress:
    """A rich progress bar on stderr (only on a terminal); yields the ``progress(done, total, what)`` callback."""

    def __enter__(self) -> Callable[[int, int, str], None]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = make_console(True)
        self._bar = Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal,
        )  # fmt: skip
        self._bar.start()
        self._task = self._bar.add_task("benchmarking", total=None)

        def update(done: int, total: int, what: str) -> None:
            self._bar.update(self._task, completed=done, total=total, description=what)

        return update

    def __exit__(self, *exc: Any) -> None:
        self._bar.stop()
