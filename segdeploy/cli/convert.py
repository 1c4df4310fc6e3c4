"""Commands from a model to a checked ONNX file: models, export, verify, lint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from segdeploy.artifact import ColorOrder, InputFormat, OutputKind, Precision
from segdeploy.cli.common import (
    LOG_WIDTH,
    CalibOption,
    CalibSizeOption,
    ConfigOption,
    JsonFlag,
    ReportOption,
    WeightsOption,
    app,
    guarded,
    make_console,
    parse_config,
    parse_floats,
    print_json,
    write_json,
)


# --------------------------------------------------------------------------- models
@app.command("models")
@guarded
def models_cmd(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on names.")] = "*",
    as_json: JsonFlag = False,
    size: Annotated[int, typer.Option(help="Input side for the GFLOPs column.")] = 512,
) -> None:
    """List the zoo: paper, parameters, GFLOPs, the export rewrites each model needs, and its options.

    Options are set with --config key=value (export, verify, bench); the table shows their defaults.
    """
    from segdeploy.errors import UserInputError
    from segdeploy.models.summary import summarize_models

    if size < 32:
        raise UserInputError(f"bad --size {size}: the zoo's models take at least 32x32")
    rows = summarize_models(pattern, size=size)
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=f"segdeploy model zoo (GFLOPs at {size}x{size}, 21 classes)")
    for col in ("name", "paper", "params (M)", "GFLOPs", "rewrites", "options (--config key=value)"):
        numeric = col in ("params (M)", "GFLOPs")
        table.add_column(col, justify="right" if numeric else "left", overflow="fold", no_wrap=col == "name")
    for r in rows:
        options = ", ".join(
            f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in r["options"].items()
        )
        table.add_row(
            r["name"], r["paper"], f"{r['params'] / 1e6:.1f}", f"{r['gflops']:.1f}",
            ", ".join(r["rewrites"]) or "-", options or "-",
        )  # fmt: skip
    make_console(log_width=2 * LOG_WIDTH).print(table)


# --------------------------------------------------------------------------- export / verify / lint
def _print_verification(report: Any) -> None:
    """One row per verified shape, then the one-line verdict (shared by export and verify)."""
    from rich.table import Table

    t = report.criteria
    table = Table(title=f"{report.candidate} vs PyTorch ({t.criterion}, {report.precision})")
    columns = _verification_columns(t.criterion)
    for col, _ in columns:
        table.add_column(col, justify="left" if col in ("input", "result") else "right")
    for r in report.results:
        table.add_row(*(cell(r) for _, cell in columns))
    console = make_console()
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    typer.echo(report.worst())


def _verification_columns(criterion: Any) -> list[tuple[str, Any]]:
    """The table's columns for a ``Criterion``: the noise floor and its ratio only where they are the criterion."""
    from segdeploy.criteria import Criterion

    columns: list[tuple[str, Any]] = [("input", lambda r: "x".join(map(str, r.shape)))]
    if criterion is Criterion.NOISE_FLOOR:
        columns += [
            ("error", lambda r: f"{r.error:.3g}"),
            ("noise floor", lambda r: "-" if r.floor is None else f"{r.floor:.3g}"),
            ("ratio", lambda r: "-" if r.ratio is None else f"{r.ratio:.2f}x"),
        ]
    columns.append(("max rel", lambda r: f"{r.max_rel_error:.3g}"))
    if criterion is Criterion.AGREEMENT_P99:
        columns.append(("p99 rel", lambda r: f"{r.p99_rel_error:.3g}"))
    columns += [
        ("agreement", lambda r: f"{r.agreement:.4%}"),
        ("mIoU", lambda r: f"{r.miou:.4f}"),
        ("result", lambda r: "ok" if r.passed else "FAIL: " + "; ".join(r.failed)),
    ]
    return columns


def default_onnx_name(stem: str, precision: Precision, input_format: InputFormat, output_kind: OutputKind) -> Path:
    """``MODEL[.INPUT_FORMAT][.OUTPUT_KIND][.PRECISION].onnx``, naming every choice that is not the default.

    Two exports that differ in input, output head or precision get two files, so the second does not
    replace the first; the same export again replaces its own file (and says so).
    """
    parts = [stem]
    if input_format is not InputFormat.FLOAT32_NCHW:
        parts.append(input_format.value)
    if output_kind is not OutputKind.LOGITS:
        parts.append(output_kind.value)
    if precision is not Precision.FP32:
        parts.append(precision.value)
    return Path(".".join(parts) + ".onnx")


@app.command("export")
@guarded
def export_cmd(
    model: Annotated[str, typer.Argument(help="Zoo name (segdeploy models) or path/to/file.py:factory.")],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "-o",
            "--output",
            help="ONNX file to write (default MODEL[.INPUT_FORMAT][.OUTPUT_KIND][.PRECISION].onnx, naming each "
            "non-default choice: unet.onnx, unet.fp16.onnx, unet.uint8-nhwc.classmap.onnx).",
        ),
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset to write, 13 to 20.")] = 17,
    num_classes: Annotated[int, typer.Option(help="Output classes of a zoo model or factory.")] = 21,
    in_channels: Annotated[int, typer.Option(help="Input channels (when --input-shape is not given).")] = 3,
    weights: WeightsOption = None,
    config: ConfigOption = None,
    input_shape: Annotated[
        Optional[str], typer.Option("--input-shape", help="NxCxHxW to trace and verify at (default 1xCx512x512).")
    ] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic batch/height/width axes.")] = True,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim.")] = True,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify/--no-verify", help="Compare with PyTorch over the size rule (odd, batch 2, tall, wide)."
        ),
    ] = True,
    precision: Annotated[
        Precision,
        typer.Option(case_sensitive=False, help="fp32; fp16 (float32 I/O); int8 or int8-fp16 (Q/DQ, needs --calib)."),
    ] = Precision.FP32,
    input_format: Annotated[
        InputFormat,
        typer.Option(
            "--input-format", case_sensitive=False, help="float32-nchw, or raw uint8 frames normalized in the graph."
        ),
    ] = InputFormat.FLOAT32_NCHW,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean, 0..1, R,G,B (default ImageNet's).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std, 0..1, R,G,B (default ImageNet's).")] = None,
    color: Annotated[
        ColorOrder, typer.Option(case_sensitive=False, help="Channel order of the input frames.")
    ] = ColorOrder.RGB,
    output_kind: Annotated[
        OutputKind,
        typer.Option("--output-kind", case_sensitive=False, help="logits, probs (softmax) or classmap (int32 argmax)."),
    ] = OutputKind.LOGITS,
    calib: CalibOption = None,
    calib_size: CalibSizeOption = 64,
    quantizer: Annotated[str, typer.Option(help="INT8: ort (ONNX Runtime) or modelopt (optional extra).")] = "ort",
    report: ReportOption = None,
) -> None:
    """Export MODEL to ONNX that TensorRT's parser accepts, then verify it against PyTorch.

    Finds the input sizes the model accepts, captures it once, rewrites max-pool indices +
    unpooling, adaptive pooling, patch unfold/fold and antialiased resizing into exact plain ops,
    writes the requested opset with named dynamic axes and metadata, simplifies, lints for TensorRT 10
    and verifies against the model's own float32 noise. Exit code 4 when verification fails (nothing
    is written then, except --report).
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from segdeploy.fileio import check_output_path
    from segdeploy.models.loading import is_user_spec
    from segdeploy.pipeline import STAGES, Calibration, ExportVerificationError, IOFormat, ModelSpec, export_onnx
    from segdeploy.shapes import parse_shape

    shape = parse_shape(input_shape) if input_shape else (1, in_channels, 512, 512)
    if output is None:
        stem = Path(model.rsplit(":", 1)[0]).stem if is_user_spec(model) else model
        output = default_onnx_name(stem, precision, input_format, output_kind)
    replaced = output.is_file()
    if report is not None:
        check_output_path(report)
    spec = ModelSpec(num_classes=num_classes, weights=weights, config=parse_config(config))
    io = IOFormat(
        input_format=input_format,
        color=color,
        mean=parse_floats(mean, "--mean"),
        std=parse_floats(std, "--std"),
        output_kind=output_kind,
    )
    calibration = Calibration(calib, max_images=calib_size, quantizer=quantizer) if calib is not None else None
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=make_console(True),
        transient=True,
    ) as bar:
        task = bar.add_task(f"exporting {model}", total=len(STAGES))

        def step(stage: str) -> None:
            bar.update(task, description=f"exporting {model}: {stage}", completed=STAGES.index(stage))

        try:
            result = export_onnx(
                model, output, input_shape=shape, opset=opset, dynamic=dynamic, precision=precision, spec=spec,
                io=io, calibration=calibration, simplify=simplify, verify=verify, progress=step,
            )  # fmt: skip
        except ExportVerificationError as exc:
            bar.stop()
            _print_verification(exc.report)
            if report is not None:
                write_json(report, exc.result.to_dict())
            raise
    _print_export(result, replaced)
    if report is not None:
        write_json(report, result.to_dict())


def _print_export(result: Any, replaced: bool = False) -> None:
    from rich.table import Table

    meta = result.metadata
    table = Table(title="segdeploy export", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    size_mb = result.path.stat().st_size / 1e6
    dims = ", ".join(meta.dynamic_axes) + " dynamic" if meta.dynamic_axes else "static"
    pre = meta.preprocessing
    table.add_row("file", f"{result.path} ({size_mb:.2f} MB{', replaced the file that was there' if replaced else ''})")
    table.add_row("opset / IR", f"{meta.opset} / {result.ir_version}")
    table.add_row(
        "input",
        f"{'x'.join(map(str, meta.trace_shape))} ({dims}), {pre.input_format.value}, {pre.color.value}"
        + (", normalized in the graph" if pre.fused else ""),
    )
    table.add_row("output", f"{meta.output.value}, {meta.num_classes} classes, precision {meta.precision.value}")
    table.add_row("sizes", meta.describe_sizes())
    table.add_row("rewrites", ", ".join(meta.rewrites) or "-")
    lint = result.lint.summary() if result.lint is not None else "skipped"
    table.add_row("TensorRT", lint if result.tensorrt_ready else f"NOT TensorRT-ready: {lint}")
    if result.fp32_nodes:
        table.add_row("kept in fp32", f"{len(result.fp32_nodes)} nodes")
    for note in result.warnings:
        table.add_row("note", note)
    table.add_row("time", f"{result.seconds:.1f} s")
    make_console().print(table)
    if result.lint is not None and not result.lint.ok:
        for issue in result.lint.errors:
            typer.echo(f"lint error: {issue.node} ({issue.op_type}): {issue.message}", err=True)
    if result.verification is not None:
        _print_verification(result.verification)


@app.command("verify")
@guarded
def verify_cmd(
    model_file: Annotated[Path, typer.Argument(help="The exported MODEL.onnx or MODEL.engine.")],
    model: Annotated[
        Optional[str], typer.Option("--model", help="Zoo name or file.py:factory (default: the file's metadata).")
    ] = None,
    weights: Annotated[
        Optional[Path],
        typer.Option(help="Checkpoint for the PyTorch reference (default: the one the file records, by sha256)."),
    ] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Classes (default: metadata, else 21).")] = None,
    in_channels: Annotated[Optional[int], typer.Option(help="Input channels (default: metadata, else 3).")] = None,
    config: ConfigOption = None,
    shape: Annotated[
        Optional[list[str]],
        typer.Option("--shape", help="NxCxHxW, repeatable (default: an odd size, batch 2, tall and wide sizes)."),
    ] = None,
    report: ReportOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Check an exported model against PyTorch at several valid input shapes.

    The PyTorch model is rebuilt from the file's metadata: the checkpoint it records (found by its
    sha256; exit 2 asking for --weights when it moved or changed) or the seed of its initial weights.
    An FP32 file passes when its error against the float64 model is within 4x PyTorch's own
    float32 error and class changes are confined to near-ties; FP16 files by relative error and
    agreement. Exit code 4 when verification fails, or when PyTorch's output carries no signal to judge.
    """
    from segdeploy.errors import VerificationError
    from segdeploy.fileio import check_output_path
    from segdeploy.shapes import parse_shape
    from segdeploy.verify import verify_file

    if report is not None:
        check_output_path(report)
    console = make_console(stderr=as_json)  # with --json, stdout holds only the JSON
    result = verify_file(
        model_file, model, weights=weights, num_classes=num_classes, in_channels=in_channels,
        config=parse_config(config) if config else None, shapes=[parse_shape(s) for s in shape] if shape else None,
        progress=lambda line: console.print(line, style="dim", markup=False),
    )  # fmt: skip
    if as_json:
        print_json(result.to_dict())
    else:
        _print_verification(result)
    if report is not None:
        write_json(report, result.to_dict())
    if not result.passed:
        raise VerificationError(f"verification failed: {result.worst()}")


@app.command("lint")
@guarded
def lint_cmd(
    model_file: Annotated[Path, typer.Argument(help="The MODEL.onnx to check.")],
    as_json: JsonFlag = False,
) -> None:
    """Check an ONNX file for TensorRT 10 compatibility, without TensorRT.

    Uses onnx-tensorrt's operator support matrix (MaxPool Indices, MaxUnpool, Resize modes,
    opset 13..20, custom domains, data types, uint8 inputs). Exit code 0 when TensorRT 10 can
    parse it, 1 when errors are found, 2 when the file is not a valid ONNX model.
    """
    from segdeploy.export.lint import lint_onnx

    result = lint_onnx(model_file)
    if as_json:
        print_json(result.to_dict())
    else:
        if result.issues:
            from rich.table import Table

            table = Table(title=f"{model_file} (opset {result.opset}, IR {result.ir_version})")
            for col in ("severity", "node", "op", "message"):
                table.add_column(col, overflow="fold")
            for issue in result.issues:
                table.add_row(issue.severity, issue.node, issue.op_type, issue.message)
            make_console().print(table)
        typer.echo(result.summary())
    if not result.ok:
        raise typer.Exit(1)
