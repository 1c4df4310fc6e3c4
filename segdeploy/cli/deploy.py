"""Commands from an ONNX file to deployment: build (TensorRT), bundle, doctor."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from segdeploy.artifact import Precision
from segdeploy.cli.common import LOG_WIDTH, JsonFlag, app, guarded, make_console, print_json
from segdeploy.errors import UserInputError


# --------------------------------------------------------------------------- build / doctor
@app.command("build")
@guarded
def build_cmd(
    onnx_path: Annotated[Path, typer.Argument(help="The ONNX file from `segdeploy export`.")],
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Engine path (default: MODEL.engine).")
    ] = None,
    min_shape: Annotated[Optional[str], typer.Option("--min-shape", help="Smallest input NxCxHxW.")] = None,
    opt_shape: Annotated[
        Optional[str], typer.Option("--opt-shape", help="Shape to tune for (default: the export's).")
    ] = None,
    max_shape: Annotated[Optional[str], typer.Option("--max-shape", help="Largest input NxCxHxW.")] = None,
    workspace: Annotated[float, typer.Option("--workspace", help="Workspace memory limit in GiB.")] = 4.0,
    timing_cache: Annotated[
        Optional[Path], typer.Option("--timing-cache", help="Timing cache file to reuse and update.")
    ] = None,
    precision: Annotated[
        Optional[Precision],
        typer.Option("--precision", case_sensitive=False, help="Engine precision (default: the ONNX's)."),
    ] = None,
) -> None:
    """Build a TensorRT engine (TensorRT 10.x or 11.x) plus a JSON sidecar describing it.

    The ONNX is linted first: a file the lint rejects for TensorRT is refused before TensorRT starts.
    """
    from segdeploy.runtime.trt_build import build_engine

    with make_console(True).status("starting TensorRT build") as status:
        result = build_engine(
            onnx_path, output, min_shape=min_shape, opt_shape=opt_shape, max_shape=max_shape,
            workspace_gb=workspace, timing_cache=timing_cache, precision=precision,
            progress=lambda message: status.update(message),
        )  # fmt: skip
    side = result.sidecar
    typing_note = (
        "strongly typed"
        if result.plan.strongly_typed
        else "weakly typed + FP16 flag"
        if result.plan.fp16_flag
        else "weakly typed"
    )
    if result.plan.explicit_quantization:
        typing_note += ", Q/DQ"
    console = make_console()
    console.print(
        f"[bold]{result.engine_path}[/bold]: {result.engine_bytes / 2**20:.1f} MiB, {side.precision.value} "
        f"({typing_note}), built in {result.build_seconds:.1f} s"
    )
    console.print(f"  TensorRT {side.tensorrt_version} on {side.gpu_name} (compute {side.compute_capability})")
    console.print(f"  profile: {result.profile}")
    console.print(f"  sidecar: {result.sidecar_path}")
    if result.timing_cache_path:
        console.print(f"  timing cache: {result.timing_cache_path}")


@app.command("doctor")
@guarded
def doctor_cmd(
    as_json: JsonFlag = False,
) -> None:
    """Show library versions, the CUDA GPU, and which engines segdeploy can use here."""
    from segdeploy.environment import available_engines, collect_environment

    env = collect_environment()
    engines = available_engines(env)
    if as_json:
        print_json({**env, "engines": engines})
        return
    from rich.markup import escape
    from rich.table import Table

    cuda = env["cuda"]
    gpu = (
        f"{cuda['gpu']} (compute {cuda['compute_capability']}, {cuda['memory_gb']} GiB, "
        f"driver {cuda.get('driver') or '?'})"
        if cuda["available"]
        else cuda.get("reason", "none")
    )
    rows = [
        ("segdeploy", env["segdeploy"]), ("python", env["python"]), ("platform", env["platform"]),
        ("cpu", f"{env['cpu']['model']} ({env['cpu']['cores']} cores)"),
        ("torch", f"{env['torch']} (CUDA {cuda.get('torch_cuda') or 'none'})" if env["torch"] else None),
        ("onnx", env["onnx"]), ("onnxruntime", env["onnxruntime"]), ("onnxsim", env["onnxsim"]),
        ("tensorrt", env["tensorrt"] or env["tensorrt_error"]), ("gpu", gpu), ("matplotlib", env["matplotlib"]),
    ]  # fmt: skip
    versions = Table(title="segdeploy doctor")
    versions.add_column("component", no_wrap=True)
    versions.add_column("version / details", overflow="fold")
    for name, value in rows:
        versions.add_row(name, escape(value) if value else "[dim]not installed[/dim]")
    usable = Table(title="engines")
    usable.add_column("engine", no_wrap=True)
    usable.add_column("usable here", overflow="fold")
    for name, status in engines.items():
        usable.add_row(
            name,
            f"[green]{escape(status)}[/green]" if status.startswith("yes") else f"[yellow]{escape(status)}[/yellow]",
        )
    console = make_console(log_width=LOG_WIDTH)  # free text: folded to a log's width when not a terminal
    console.print(versions)
    console.print(usable)


# --------------------------------------------------------------------------- bundle
@app.command("bundle")
@guarded
def bundle_cmd(
    model_file: Annotated[Optional[Path], typer.Argument(help="The ONNX file from `segdeploy export`.")] = None,
    output: Annotated[
        Optional[Path], typer.Option("-o", "--output", help="Bundle directory: new, or an existing empty one.")
    ] = None,
    engine: Annotated[
        Optional[Path], typer.Option("--engine", help="TensorRT plan built from MODEL (by `segdeploy build`).")
    ] = None,
    labels: Annotated[
        Optional[Path], typer.Option("--labels", help="Text file, one label per class (default class_0, class_1...).")
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Model name, e.g. for Triton (default: the file's).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty output directory.")] = False,
    check: Annotated[
        Optional[Path], typer.Option("--check", metavar="DIR", help="Check an existing bundle; exit 4 on a problem.")
    ] = None,
    trt_version: Annotated[
        Optional[str], typer.Option("--trt-version", help="Plan without a sidecar: the TensorRT version that built it.")
    ] = None,
    compute_capability: Annotated[
        Optional[str], typer.Option("--compute-capability", help="Plan without a sidecar: its GPU's MAJOR.MINOR.")
    ] = None,
    gpu_name: Annotated[Optional[str], typer.Option("--gpu-name", help="Plan without a sidecar: its GPU.")] = None,
    min_shape: Annotated[Optional[str], typer.Option("--min-shape", help="Plan without a sidecar: its min shape.")] = (
        None
    ),
    opt_shape: Annotated[Optional[str], typer.Option("--opt-shape", help="Plan without a sidecar: its opt shape.")] = (
        None
    ),
    max_shape: Annotated[Optional[str], typer.Option("--max-shape", help="Plan without a sidecar: its max shape.")] = (
        None
    ),
) -> None:
    """Write a deployment bundle: the model, its manifest, a golden pair, Triton and DeepStream files.

    `segdeploy bundle MODEL.onnx -o DIR` writes DIR whole or not at all: segdeploy.json, model.onnx, model.plan
    (with --engine), labels.txt, golden/, triton/, client.py, deepstream/ and README.md. A plan needs the
    sidecar `segdeploy build` writes, or its facts: --trt-version, --compute-capability and the shapes.

    `segdeploy bundle --check DIR` proves a bundle consistent without a server or GPU.
    """
    facts_given = {
        "--trt-version": trt_version, "--compute-capability": compute_capability, "--gpu-name": gpu_name,
        "--min-shape": min_shape, "--opt-shape": opt_shape, "--max-shape": max_shape,
    }  # fmt: skip
    if check is not None:
        extra = [
            flag
            for flag, value in (
                ("MODEL", model_file),
                ("-o", output),
                ("--engine", engine),
                ("--labels", labels),
                ("--name", name),
                ("--force", force or None),
                *facts_given.items(),
            )
            if value is not None
        ]
        if extra:
            raise UserInputError(f"--check DIR checks an existing bundle; drop {', '.join(extra)}")
        _check_bundle(check)
        return
    if model_file is None or output is None:
        raise UserInputError("give the ONNX file and -o DIR (segdeploy bundle MODEL.onnx -o DIR), or --check DIR")
    import time

    from segdeploy.bundle import write_bundle
    from segdeploy.bundle.engine import EngineFactsGiven

    facts = None
    if any(v is not None for v in facts_given.values()):
        if trt_version is None or compute_capability is None:
            raise UserInputError("a plan's facts need both --trt-version and --compute-capability")
        facts = EngineFactsGiven(
            trt_version, compute_capability, min_shape, opt_shape, max_shape, gpu_name=gpu_name or "unknown"
        )
    started = time.perf_counter()
    with make_console(True).status(f"bundling {model_file}"):
        path = write_bundle(
            model_file, output, engine=engine, engine_facts=facts, labels=labels, name=name, force=force
        )
    _print_bundle(path, time.perf_counter() - started)


def _print_bundle(path: Path, seconds: float) -> None:
    from rich.markup import escape

    from segdeploy.bundle.layout import walk
    from segdeploy.bundle.manifest import BundleManifest

    manifest = BundleManifest.read(path)
    spec, out = manifest.input, manifest.output
    files = walk(path)[0]
    size = sum((path / p).stat().st_size for p in files)
    console = make_console()
    console.print(
        f"[bold]{escape(str(path))}[/bold]: {len(files)} files, {size / 1e6:.2f} MB, written in {seconds:.1f} s"
    )
    console.print(
        f"  model: {manifest.precision.value}, {spec.dtype} {spec.layout} {spec.color.value} -> "
        f"{out.kind.value} ({out.dtype} {out.layout}), {manifest.num_classes} classes",
        markup=False,
    )
    if manifest.engine:
        engine = manifest.engine
        console.print(
            f"  engine: {engine.file}, TensorRT {engine.tensorrt_version} on {engine.gpu_name} "
            f"(compute {engine.compute_capability}, facts from the {engine.facts.value})",
            markup=False,
        )
    console.print(f"  triton: {', '.join(f'triton/{m}' for m in manifest.triton)}", markup=False)
    ds = manifest.deepstream
    console.print(
        f"  deepstream: {ds.config} ({ds.mode.value}: "
        + (f"runs {ds.onnx}, nvinfer feeds 0..255 pixels)" if ds.onnx else "runs model.onnx and the plan)"),
        markup=False,
    )
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
    make_console().print(table)
    report.raise_for_problems()
    skipped = f" ({len(report.skipped)} skipped)" if report.skipped else ""
    typer.echo(f"bundle OK: {len(report.results) - len(report.skipped)} checks passed{skipped}")
