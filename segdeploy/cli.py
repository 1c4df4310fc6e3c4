"""The ``segdeploy`` command line: thin commands over the library.

Every command body imports the library lazily (``--help`` must not import
torch) and raises ``SegdeployError`` for problems the user can fix; the
``_guarded`` wrapper turns those into one line on stderr and an exit code.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from segdeploy._version import __version__
from segdeploy.artifact import ColorOrder, Engine, InputFormat, OutputKind, Precision
from segdeploy.errors import EXIT_CODES_HELP, SegdeployError, UserInputError

app = typer.Typer(
    name="segdeploy",
    help="Semantic-segmentation networks from PyTorch to ONNX and TensorRT.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> typer.Exit:
    if _state["verbose"]:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _guarded(fn: F) -> F:
    """Map segdeploy errors to one line + exit code; anything else is an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except SegdeployError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except Exception as exc:  # a bug: still one line unless --verbose
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _fail(f"internal error: {type(exc).__name__}: {first} (rerun with --verbose for details)", 1) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"segdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["verbose"] = verbose


def _console(stderr: bool = False) -> Any:
    """A rich console; when not a terminal (a log, CI), wide enough that tables are never cut."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=400)


def _parse_config(items: list[str] | None) -> dict[str, Any]:
    """``["backbone=resnet101", "width_mult=0.5"]`` -> ``{"backbone": "resnet101", "width_mult": 0.5}``."""
    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"bad --config {item!r}: expected key=value, e.g. backbone=resnet101")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word: a string option
        config[key.strip()] = value
    return config


def _floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserInputError(f"bad {what} {text!r}: expected numbers separated by commas, e.g. 0.485,0.456,0.406") from None


def _write_json(path: Path, data: Any) -> None:
    from segdeploy.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


ConfigOption = Annotated[
    Optional[list[str]],
    typer.Option("--config", "-c", help="Builder option key=value, repeatable (see `segdeploy models --json`)."),
]


# --------------------------------------------------------------------------- models
@app.command("models")
@_guarded
def models_cmd(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on names.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (with each builder's options).")] = False,
    size: Annotated[int, typer.Option(help="Input side for the GFLOPs column.")] = 512,
) -> None:
    """List the zoo: paper, parameters, GFLOPs, the export rewrites each model needs, and its options."""
    from segdeploy.models.summary import summarize_models

    rows = summarize_models(pattern, size=size)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"segdeploy model zoo (GFLOPs at {size}x{size}, 21 classes)")
    for col in ("name", "paper", "params (M)", "GFLOPs", "rewrites"):
        table.add_column(col, justify="right" if col in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        table.add_row(r["name"], r["paper"], f"{r['params'] / 1e6:.1f}", f"{r['gflops']:.1f}", ", ".join(r["rewrites"]) or "-")
    _console().print(table)


# --------------------------------------------------------------------------- export / verify / lint
def _print_verification(report: Any) -> None:
    """One row per verified shape, then the one-line verdict (shared by export and verify)."""
    from rich.table import Table

    t = report.criteria
    table = Table(title=f"{report.candidate} vs PyTorch ({t.criterion}, {report.precision})")
    for col in ("input", "error", "noise floor", "ratio", "max rel", "agreement", "mIoU", "result"):
        table.add_column(col, justify="left" if col in ("input", "result") else "right")
    for r in report.results:
        ratio = r.ratio
        table.add_row(
            "x".join(map(str, r.shape)), f"{r.error:.3g}", "-" if r.floor is None else f"{r.floor:.3g}",
            "-" if ratio is None else f"{ratio:.2f}x", f"{r.max_rel_error:.3g}", f"{r.agreement:.4%}",
            f"{r.miou:.4f}", "ok" if r.passed else "FAIL: " + "; ".join(r.failed),
        )  # fmt: skip
    console = _console()
    console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", markup=False)
    typer.echo(report.worst())


@app.command("export")
@_guarded
def export_cmd(
    model: Annotated[str, typer.Argument(help="Zoo name (segdeploy models) or path/to/file.py:factory.")],
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="ONNX file to write (default MODEL.onnx, MODEL.fp16.onnx).")
    ] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset to write, 13 to 20.")] = 17,
    num_classes: Annotated[int, typer.Option(help="Output classes of a zoo model or factory.")] = 21,
    in_channels: Annotated[int, typer.Option(help="Input channels (when --input-shape is not given).")] = 3,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint to load (weights only).")] = None,
    config: ConfigOption = None,
    input_shape: Annotated[
        Optional[str], typer.Option("--input-shape", help="NxCxHxW to trace and verify at (default 1xCx512x512).")
    ] = None,
    dynamic: Annotated[bool, typer.Option("--dynamic/--static", help="Dynamic batch/height/width axes.")] = True,
    simplify: Annotated[bool, typer.Option("--simplify/--no-simplify", help="Simplify with onnxsim.")] = True,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Compare with PyTorch at 3 valid shapes.")
    ] = True,
    precision: Annotated[Precision, typer.Option(case_sensitive=False, help="fp32, or fp16 (float32 input/output).")] = Precision.FP32,
    input_format: Annotated[
        InputFormat, typer.Option("--input-format", case_sensitive=False, help="float32-nchw, or raw uint8 frames normalized in the graph.")
    ] = InputFormat.FLOAT32_NCHW,
    mean: Annotated[Optional[str], typer.Option(help="Per-channel mean, 0..1, R,G,B (default ImageNet's).")] = None,
    std: Annotated[Optional[str], typer.Option(help="Per-channel std, 0..1, R,G,B (default ImageNet's).")] = None,
    color: Annotated[ColorOrder, typer.Option(case_sensitive=False, help="Channel order of the input frames.")] = ColorOrder.RGB,
    output_kind: Annotated[
        OutputKind, typer.Option("--output", case_sensitive=False, help="logits, probs (softmax) or classmap (int32 argmax).")
    ] = OutputKind.LOGITS,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the export result as JSON here.")] = None,
) -> None:
    """Export MODEL to ONNX that TensorRT's parser accepts, then verify it against PyTorch.

    Finds the input sizes the model accepts, captures it once, rewrites max-pool indices +
    unpooling and adaptive pooling into exact plain ops, writes the requested opset with named
    dynamic axes and metadata, simplifies, lints for TensorRT 10 and verifies against the model's
    own float32 noise. Exit code 4 when verification fails (nothing is written then, except --report).
    """
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from segdeploy.errors import VerificationError
    from segdeploy.export.onnx import STAGES, export_onnx
    from segdeploy.fileio import check_output_path
    from segdeploy.models.loading import is_user_spec
    from segdeploy.shapes import parse_shape

    shape = parse_shape(input_shape) if input_shape else (1, in_channels, 512, 512)
    if output is None:
        stem = Path(model.rsplit(":", 1)[0]).stem if is_user_spec(model) else model
        output = Path(f"{stem}.onnx" if precision is Precision.FP32 else f"{stem}.{precision.value}.onnx")
    if report is not None:
        check_output_path(report)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=_console(True),
                  transient=True) as bar:
        task = bar.add_task(f"exporting {model}", total=len(STAGES))

        def step(stage: str) -> None:
            bar.update(task, description=f"exporting {model}: {stage}", completed=STAGES.index(stage))

        try:
            result = export_onnx(
                model, output, input_shape=shape, opset=opset, dynamic=dynamic, precision=precision,
                simplify=simplify, verify=verify, num_classes=num_classes, weights=weights, config=_parse_config(config),
                input_format=input_format, color=color, mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
                output=output_kind, progress=step,
            )  # fmt: skip
        except VerificationError as exc:
            bar.stop()
            if getattr(exc, "report", None) is not None:
                _print_verification(exc.report)  # type: ignore[attr-defined]
            if report is not None and getattr(exc, "result", None) is not None:
                _write_json(report, exc.result.to_dict())  # type: ignore[attr-defined]
            raise
    _print_export(result)
    if report is not None:
        _write_json(report, result.to_dict())


def _print_export(result: Any) -> None:
    from rich.table import Table

    meta = result.metadata
    table = Table(title="segdeploy export", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    size_mb = result.path.stat().st_size / 1e6
    dims = ", ".join(meta.dynamic_axes) + " dynamic" if meta.dynamic_axes else "static"
    pre = meta.preprocessing
    table.add_row("file", f"{result.path} ({size_mb:.2f} MB)")
    table.add_row("opset / IR", f"{meta.opset} / {result.ir_version}")
    table.add_row("input", f"{'x'.join(map(str, meta.trace_shape))} ({dims}), {pre.input_format.value}, {pre.color.value}"
                           + (", normalized in the graph" if pre.fused else ""))
    table.add_row("output", f"{meta.output.value}, {meta.num_classes} classes, precision {meta.precision.value}")
    table.add_row("sizes", result.size_rule.describe() if result.size_rule is not None else "-")
    table.add_row("rewrites", ", ".join(meta.rewrites) or "-")
    lint = result.lint.summary() if result.lint is not None else "skipped"
    table.add_row("TensorRT", lint if result.tensorrt_ready else f"NOT TensorRT-ready: {lint}")
    if result.fp32_nodes:
        table.add_row("kept in fp32", f"{len(result.fp32_nodes)} nodes")
    for note in result.warnings:
        table.add_row("note", note)
    table.add_row("time", f"{result.seconds:.1f} s")
    _console().print(table)
    if result.lint is not None and not result.lint.ok:
        for issue in result.lint.errors:
            typer.echo(f"lint error: {issue.node} ({issue.op_type}): {issue.message}", err=True)
    if result.verification is not None:
        _print_verification(result.verification)


@app.command("verify")
@_guarded
def verify_cmd(
    model_file: Annotated[Path, typer.Argument(help="The exported MODEL.onnx or MODEL.engine.")],
    model: Annotated[
        Optional[str], typer.Option("--model", help="Zoo name or file.py:factory (default: the file's metadata).")
    ] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint for the PyTorch reference.")] = None,
    num_classes: Annotated[Optional[int], typer.Option(help="Classes (default: metadata, else 21).")] = None,
    in_channels: Annotated[Optional[int], typer.Option(help="Input channels (default: metadata, else 3).")] = None,
    config: ConfigOption = None,
    shape: Annotated[
        Optional[list[str]],
        typer.Option("--shape", help="NxCxHxW, repeatable (default: the traced shape, an odd size and batch 2)."),
    ] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write the results as JSON here.")] = None,
) -> None:
    """Check an exported model against PyTorch at several valid input shapes.

    An FP32 file passes when its error against the float64 model is within 4x PyTorch's own
    float32 error and class changes are confined to near-ties; FP16 files by relative error and
    agreement. Exit code 4 when verification fails.
    """
    from segdeploy.errors import VerificationError
    from segdeploy.fileio import check_output_path
    from segdeploy.shapes import parse_shape
    from segdeploy.verify import verify_file

    if report is not None:
        check_output_path(report)
    console = _console()
    result = verify_file(
        model_file, model, weights=weights, num_classes=num_classes, in_channels=in_channels,
        config=_parse_config(config) if config else None, shapes=[parse_shape(s) for s in shape] if shape else None,
        progress=lambda line: console.print(line, style="dim", markup=False),
    )  # fmt: skip
    _print_verification(result)
    if report is not None:
        _write_json(report, result.to_dict())
    if not result.passed:
        raise VerificationError(f"verification failed: {result.worst()}")


@app.command("lint")
@_guarded
def lint_cmd(
    model_file: Annotated[Path, typer.Argument(help="The MODEL.onnx to check.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Check an ONNX file for TensorRT 10 compatibility, without TensorRT.

    Uses onnx-tensorrt's operator support matrix (MaxPool Indices, MaxUnpool, Resize modes,
    opset 13..20, custom domains, data types, uint8 inputs). Exit code 0 when TensorRT 10 can
    parse it, 1 when errors are found, 2 when the file is not a valid ONNX model.
    """
    from segdeploy.export.lint import lint_onnx

    result = lint_onnx(model_file)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        if result.issues:
            from rich.table import Table

            table = Table(title=f"{model_file} (opset {result.opset}, IR {result.ir_version})")
            for col in ("severity", "node", "op", "message"):
                table.add_column(col, overflow="fold")
            for issue in result.issues:
                table.add_row(issue.severity, issue.node, issue.op_type, issue.message)
            _console().print(table)
        typer.echo(result.summary())
    if not result.ok:
        raise typer.Exit(1)


# --------------------------------------------------------------------------- build / doctor
@app.command("build")
@_guarded
def build_cmd(
    onnx_path: Annotated[Path, typer.Argument(help="The ONNX file from `segdeploy export`.")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Engine path (default: MODEL.engine).")] = None,
    min_shape: Annotated[Optional[str], typer.Option("--min-shape", help="Smallest input NxCxHxW.")] = None,
    opt_shape: Annotated[Optional[str], typer.Option("--opt-shape", help="Shape to tune for (default: the export's).")] = None,
    max_shape: Annotated[Optional[str], typer.Option("--max-shape", help="Largest input NxCxHxW.")] = None,
    workspace: Annotated[float, typer.Option("--workspace", help="Workspace memory limit in GiB.")] = 4.0,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="Timing cache file to reuse and update.")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", case_sensitive=False, help="Engine precision (default: the ONNX's).")] = None,
) -> None:
    """Build a TensorRT engine (TensorRT 10.x or 11.x) plus a JSON sidecar describing it.

    The ONNX is linted first: a file the lint rejects for TensorRT is refused before TensorRT starts.
    """
    from segdeploy.runtime.trt_build import build_engine

    with _console(True).status("starting TensorRT build") as status:
        result = build_engine(
            onnx_path, output, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
            workspace_gb=workspace, timing_cache=timing_cache, precision=precision.value if precision else None,
            progress=lambda message: status.update(message),
        )  # fmt: skip
    side = result.sidecar
    typing_note = "strongly typed" if result.plan.strongly_typed else "weakly typed + FP16 flag" if result.plan.fp16_flag else "weakly typed"
    if result.plan.explicit_quantization:
        typing_note += ", Q/DQ"
    console = _console()
    console.print(f"[bold]{result.engine_path}[/bold]: {result.engine_bytes / 2**20:.1f} MiB, {side['precision']} "
                  f"({typing_note}), built in {result.build_seconds:.1f} s")
    console.print(f"  TensorRT {side['tensorrt_version']} on {side['gpu_name']} (compute {side['compute_capability']})")
    console.print(f"  profile: {result.profile}")
    console.print(f"  sidecar: {result.sidecar_path}")
    if result.timing_cache_path:
        console.print(f"  timing cache: {result.timing_cache_path}")


@app.command("doctor")
@_guarded
def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show library versions, the CUDA GPU, and which engines segdeploy can use here."""
    from segdeploy.environment import available_engines, collect_environment

    env = collect_environment()
    engines = available_engines(env)
    if as_json:
        typer.echo(json.dumps({**env, "engines": engines}, indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    cuda = env["cuda"]
    gpu = (f"{cuda['gpu']} (compute {cuda['compute_capability']}, {cuda['memory_gb']} GiB, driver {cuda.get('driver') or '?'})"
           if cuda["available"] else cuda.get("reason", "none"))
    rows = [
        ("segdeploy", env["segdeploy"]), ("python", env["python"]), ("platform", env["platform"]),
        ("cpu", f"{env['cpu']['model']} ({env['cpu']['cores']} cores)"),
        ("torch", f"{env['torch']} (CUDA {cuda.get('torch_cuda') or 'none'})" if env["torch"] else None),
        ("onnx", env["onnx"]), ("onnxruntime", env["onnxruntime"]), ("onnxsim", env["onnxsim"]),
        ("tensorrt", env["tensorrt"] or env["tensorrt_error"]), ("gpu", gpu), ("matplotlib", env["matplotlib"]),
    ]  # fmt: skip
    versions = Table(title="segdeploy doctor")
    versions.add_column("component")
    versions.add_column("version / details")
    for name, value in rows:
        versions.add_row(name, escape(value) if value else "[dim]not installed[/dim]")
    usable = Table(title="engines")
    usable.add_column("engine")
    usable.add_column("usable here")
    for name, status in engines.items():
        usable.add_row(name, f"[green]{escape(status)}[/green]" if status.startswith("yes") else f"[yellow]{escape(status)}[/yellow]")
    console = _console()
    console.print(versions)
    console.print(usable)


# --------------------------------------------------------------------------- bundle
@app.command("bundle")
@_guarded
def bundle_cmd(
    model_file: Annotated[Optional[Path], typer.Argument(help="The ONNX file from `segdeploy export`.")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="Bundle directory to create.")] = None,
    engine: Annotated[
        Optional[Path], typer.Option("--engine", help="TensorRT engine built from MODEL by `segdeploy build`.")
    ] = None,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="Text file, one label per class (default class_0, class_1...).")
    ] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Model name, e.g. for Triton (default: the file's).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty output directory.")] = False,
    check: Annotated[
        Optional[Path], typer.Option("--check", metavar="DIR", help="Check an existing bundle; exit 4 on a problem.")
    ] = None,
) -> None:
    """Write a deployment bundle: the model, its manifest, a golden input/output pair, Triton and DeepStream configs.

    `segdeploy bundle MODEL.onnx -o DIR` writes DIR atomically: segdeploy.json, model.onnx, model.plan (with
    --engine), labels.txt, golden/, triton/, deepstream/ (when nvinfer can run the model) and README.md.

    `segdeploy bundle --check DIR` proves a bundle consistent without a server or GPU.
    """
    if check is not None:
        extra = [flag for flag, value in (("MODEL", model_file), ("-o", output), ("--engine", engine),
                                          ("--labels", labels), ("--name", name), ("--force", force or None))
                 if value is not None]
        if extra:
            raise UserInputError(f"--check DIR checks an existing bundle; drop {', '.join(extra)}")
        _check_bundle(check)
        return
    if model_file is None or output is None:
        raise UserInputError("give the ONNX file and -o DIR (segdeploy bundle MODEL.onnx -o DIR), or --check DIR")
    import time

    from segdeploy.bundle import write_bundle

    started = time.perf_counter()
    with _console(True).status(f"bundling {model_file}"):
        path = write_bundle(model_file, output, engine=engine, labels=labels, name=name, force=force)
    _print_bundle(path, time.perf_counter() - started)


def _print_bundle(path: Path, seconds: float) -> None:
    from rich.markup import escape

    from segdeploy.bundle import deepstream
    from segdeploy.bundle.manifest import DEEPSTREAM_CONFIG, MANIFEST

    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    spec, out = manifest["input"], manifest["output"]
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    console = _console()
    console.print(f"[bold]{escape(str(path))}[/bold]: {len(manifest['files']) + 1} files, {size / 1e6:.2f} MB, "
                  f"written in {seconds:.1f} s")
    console.print(f"  model: {manifest['precision']}, {spec['dtype']} {spec['layout']} {spec['color']} -> "
                  f"{out['kind']} ({out['dtype']} {out['layout']}), {manifest['num_classes']} classes", markup=False)
    engine = manifest.get("engine")
    if engine:
        console.print(f"  engine: {engine['file']}, TensorRT {engine['tensorrt_version']} on {engine['gpu_name']} "
                      f"(compute {engine['compute_capability']})", markup=False)
    models = ", ".join(f"triton/{d.name}" for d in sorted((path / "triton").iterdir()))
    console.print(f"  triton: {models}", markup=False)
    reasons, notes = deepstream.fit(manifest)
    if reasons:
        for reason in reasons:
            console.print(f"  deepstream: no config written: {reason}", markup=False)
    else:
        console.print(f"  deepstream: {DEEPSTREAM_CONFIG}", markup=False)
        for note in notes:
            console.print(f"  deepstream note: {note}", markup=False)
    console.print(f"  check it: segdeploy bundle --check {path}", markup=False)


def _check_bundle(path: Path) -> None:
    from rich.markup import escape
    from rich.table import Table

    from segdeploy.bundle import check_bundle

    report = check_bundle(path)
    table = Table(title=f"segdeploy bundle --check {escape(str(path))}")
    for column in ("check", "result", "details"):
        table.add_column(column, overflow="fold")
    style = {"ok": "green", "failed": "red", "skipped": "yellow"}
    for result in report.results:
        details = "; ".join(result.problems) if result.problems else result.detail
        table.add_row(result.name, f"[{style[result.status]}]{result.status}[/{style[result.status]}]", escape(details))
    _console().print(table)
    report.raise_for_problems()
    skipped = f" ({len(report.skipped)} skipped)" if report.skipped else ""
    typer.echo(f"bundle OK: {len(report.results) - len(report.skipped)} checks passed{skipped}")


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
@_guarded
def bench_cmd(
    model: Annotated[
        Optional[str], typer.Argument(help="Zoo name, .onnx or .engine file; omit to run every zoo model.")
    ] = None,
    engine: Annotated[
        Optional[list[Engine]], typer.Option("--engine", "-e", case_sensitive=False, help="Repeat to compare (default torch and ort).")
    ] = None,
    shape: Annotated[str, typer.Option(help="Input shape NxCxHxW; N is the batch unless --batch is given.")] = "1x3x512x512",
    batch: Annotated[Optional[str], typer.Option("--batch", help="Batch sizes, comma-separated, e.g. 1,4,8.")] = None,
    precision: Annotated[Precision, typer.Option(case_sensitive=False, help="Precision of zoo exports (fp16: ort and trt only).")] = Precision.FP32,
    config: ConfigOption = None,
    warmup: Annotated[int, typer.Option(help="Untimed warm-up steps.")] = 10,
    iters: Annotated[Optional[int], typer.Option(help="Timed steps (instead of --seconds).")] = None,
    seconds: Annotated[Optional[float], typer.Option(help="Time budget per measurement, at least 10 steps (default 3).")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch and ONNX Runtime alike.")] = None,
    cuda_graph: Annotated[bool, typer.Option("--cuda-graph", help="TensorRT: time CUDA-graph replays.")] = False,
    small: Annotated[bool, typer.Option("--small", help="Zoo models in their small test configuration (smoke runs).")] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write records and environment as JSON.")] = None,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Write the records as CSV.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead of the rich table.")] = False,
    plot_path: Annotated[Optional[Path], typer.Option("--plot", help="Save a latency bar chart (.png/.svg/.pdf; needs matplotlib).")] = None,
) -> None:
    """Benchmark engines side by side: latency percentiles, images/s, GFLOP/s, speed-up."""
    from segdeploy import report
    from segdeploy.bench import run_benchmarks
    from segdeploy.shapes import parse_shape

    input_shape = parse_shape(shape)
    batches = _parse_batches(batch)
    if iters is not None and seconds is not None:
        raise UserInputError("give --iters or --seconds, not both")
    for path in (json_path, csv_path):
        if path is not None:
            report.check_output_path(path)
    if plot_path is not None:
        report.check_plot_target(plot_path)
    with _BenchProgress() as progress:
        suite = run_benchmarks(
            [model] if model else [], engine or None, shape=input_shape, batches=batches, precision=precision,
            warmup=warmup, iters=iters, seconds=seconds, threads=threads, progress=progress, small=small,
            cuda_graph=cuda_graph, model_config=_parse_config(config),
        )  # fmt: skip
    if markdown:
        typer.echo(report.markdown_table(suite.records), nl=False)
    else:
        _console().print(report.render_table(suite.records, title="segdeploy bench (latency in ms)"))
    if json_path is not None:
        report.write_json(suite, json_path)
    if csv_path is not None:
        report.write_csv(suite.records, csv_path)
    if plot_path is not None:
        report.plot(suite.records, plot_path)


class _BenchProgress:
    """A rich progress bar on stderr (only on a terminal); yields the ``progress(done, total, what)`` callback."""

    def __enter__(self) -> Callable[[int, int, str], None]:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        console = _console(True)
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


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
