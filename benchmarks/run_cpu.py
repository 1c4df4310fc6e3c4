"""Benchmark the zoo on this machine's CPU: PyTorch eager against ONNX Runtime, one run.

Measures, in the same process and with the same thread count:

1. the fp32 matmul ceiling (2048^3, best of a few, once before and once after
   the models, the better kept),
2. torch and ort latency for every zoo model (default configs, batch 1),
3. SegNet exported by the stock exporter at a fixed shape (MaxPool with
   Indices + ScatterND) against segdeploy's rewritten export, on ONNX Runtime,
4. TensorRT fp32/fp16 rows when TensorRT and a GPU are present.

Writes ``<out>/cpu-<date>.json`` (everything) and ``<out>/cpu.md`` (the table
the README points to). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best achieved fp32 GFLOP/s of an ``n^3`` matmul with torch's current thread count."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def stock_segnet_onnx(config: dict[str, Any], shape: tuple[int, int, int, int], path: Path) -> Path:
    """SegNet through plain ``torch.onnx.export`` at a fixed shape: MaxPool Indices + ScatterND unpooling."""
    import onnx
    import torch

    from segdeploy.models import create_model

    module = create_model("segnet", **config)
    torch.onnx.export(
        module, (torch.randn(shape),), str(path), input_names=["input"], output_names=["logits"], opset_version=17
    )
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    if "ScatterND" not in ops and "MaxUnpool" not in ops:
        print(f"note: the stock SegNet export has no ScatterND/MaxUnpool (ops: {sorted(ops)})", file=sys.stderr)
    return path


def compare_segnet_unpooling(
    config: dict[str, Any],
    shape: tuple[int, int, int, int],
    *,
    threads: int,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    rounds: int = 5,
) -> dict[str, Any]:
    """ORT latency of the stock SegNet export against segdeploy's, interleaved over ``rounds``.

    The target compares like with like: the stock export only works at a fixed
    shape, so segdeploy's rewritten SegNet is exported at that same fixed shape
    (``dynamic=False``). The dynamic N/H/W file users get by default is timed
    too, as information: ONNX Runtime plans a fixed-shape graph more tightly.

    Returns:
        Per label (``stock``, ``rewritten``, ``rewritten_dynamic``) the p50 of every
        round in ms, and ``ratio`` / ``ratio_dynamic`` = median over rounds of
        rewritten / stock.
    """
    from segdeploy.bench import benchmark
    from segdeploy.pipeline import ModelSpec, cached_onnx, export_onnx
    from segdeploy.runtime.ort_runner import OrtRunner

    batch = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        files = {
            "stock": stock_segnet_onnx(config, shape, Path(tmp) / "segnet-stock.onnx"),
            "rewritten": export_onnx(
                "segnet",
                Path(tmp) / "segnet-static.onnx",
                input_shape=shape,
                dynamic=False,
                verify=False,
                spec=ModelSpec(config=config),
            ).path,
            "rewritten_dynamic": cached_onnx("segnet", config=config, shape=shape),
        }
        runners = {label: OrtRunner(path, threads=threads) for label, path in files.items()}
        p50 = {label: [] for label in files}
        # interleaved rounds so that drift on a shared machine hits all alike
        for _ in range(rounds):
            for label, runner in runners.items():
                record = benchmark(runner, batch, warmup=warmup, iters=iters, seconds=seconds, threads=threads)
                p50[label].append(record.latency.p50)
    median = {label: float(np.median(values)) for label, values in p50.items()}
    return {
        "shape": list(shape),
        "rounds": rounds,
        "p50_ms": p50,
        "median_p50_ms": median,
        "ratio": median["rewritten"] / median["stock"],
        "ratio_dynamic": median["rewritten_dynamic"] / median["stock"],
    }


def markdown(result: dict[str, Any]) -> str:
    """The README table: torch vs ort per model, the ceiling, SegNet's unpooling cost, TensorRT rows."""
    ceiling = result["matmul_gflops"]
    cpu = result["environment"].get("cpu") or {}
    cpu_text = (
        f"{cpu.get('model', 'unknown CPU')} ({cpu.get('cores', '?')} cores)" if isinstance(cpu, dict) else str(cpu)
    )
    lines = [
        f"CPU benchmark, {result['date']}: {cpu_text}, "
        f"{result['threads']} threads, input {result['shape']}, batch 1, {result['iterations_note']}.",
        f"fp32 matmul ceiling (2048^3, same run): {ceiling:.0f} GFLOP/s. "
        "Latencies are means in ms; GFLOP/s counts 2 FLOPs per multiply-add.",
        "",
        "| model | torch ms | ort ms | ort speed-up | ort GFLOP/s | % of matmul |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["model"], r["engine"]): r for r in result["records"]}
    for model in dict.fromkeys(r["model"] for r in result["records"]):
        torch_r, ort_r = by_key.get((model, "torch")), by_key.get((model, "ort"))
        if not (torch_r and ort_r):
            continue
        speedup = torch_r["latency_ms"]["mean"] / ort_r["latency_ms"]["mean"]
        gflops = ort_r["gflops"]
        lines.append(
            f"| {model} | {torch_r['latency_ms']['mean']:.1f} | {ort_r['latency_ms']['mean']:.1f} | {speedup:.2f}x | "
            f"{gflops:.0f} | {100 * gflops / ceiling:.0f}% |"
        )
    segnet = result.get("segnet_unpooling")
    if segnet:
        median = segnet["median_p50_ms"]
        lines += [
            "",
            f"SegNet unpooling on ONNX Runtime at {'x'.join(map(str, segnet['shape']))}, fixed shape "
            f"(median of {segnet['rounds']} interleaved rounds of p50): stock export (MaxPool Indices + ScatterND) "
            f"{median['stock']:.1f} ms, segdeploy's rewritten export {median['rewritten']:.1f} ms, "
            f"ratio {segnet['ratio']:.3f} (target <= 1.05). The default dynamic N/H/W file: "
            f"{median['rewritten_dynamic']:.1f} ms, ratio {segnet['ratio_dynamic']:.3f}.",
        ]
    trt = result.get("trt_records") or []
    if trt:
        lines += [
            "",
            "| model | TensorRT precision | GPU compute ms (p50) | end-to-end ms (p50) |",
            "|---|---|---:|---:|",
        ]
        for r in trt:
            lines.append(
                f"| {r['model']} | {r['precision']} | {r['gpu_compute_ms']['p50']:.2f} "
                f"| {r['end_to_end_ms']['p50']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: all)")
    parser.add_argument("--size", type=int, default=512, help="input height and width (default 512)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--iters", type=int, default=None, help="timed steps per measurement")
    group.add_argument("--seconds", type=float, default=None, help="time per measurement (default 3 s, >= 10 steps)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=None, help="threads for torch, ORT and the matmul (default torch's)"
    )
    parser.add_argument("--small", action="store_true", help="small test configs (smoke runs only)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    args = parser.parse_args(argv)

    import torch

    from segdeploy.fileio import write_text_atomic
    from segdeploy.models import list_models, model_info
    from segdeploy.pipeline import run_benchmarks

    models = [m for m in args.models.split(",") if m] or list_models()
    for name in models:
        model_info(name)  # unknown names fail before any work
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    shape = (1, 3, args.size, args.size)
    options = {
        "warmup": args.warmup,
        "iters": args.iters,
        "seconds": args.seconds,
        "threads": threads,
        "small": args.small,
    }

    def progress(done: int, total: int, what: str) -> None:
        print(f"[{done}/{total}] {what}", file=sys.stderr, flush=True)

    ceiling_before = matmul_gflops()
    suite = run_benchmarks(models, ["torch", "ort"], shape=shape, progress=progress, **options)
    segnet = None
    if "segnet" in models:
        print("segnet: stock vs rewritten export on ONNX Runtime", file=sys.stderr, flush=True)
        config = dict(model_info("segnet").test_config) if args.small else {}
        segnet = compare_segnet_unpooling(
            config, shape, threads=threads, warmup=args.warmup, iters=args.iters, seconds=args.seconds
        )
    trt_records = []
    if torch.cuda.is_available():
        try:
            for precision in ("fp32", "fp16"):
                trt_suite = run_benchmarks(
                    models, ["trt"], shape=shape, precision=precision, progress=progress, **options
                )
                trt_records += [r.to_dict() for r in trt_suite.records]
        except Exception as exc:  # the CPU table is the point of this script: keep it when TensorRT fails
            print(f"TensorRT rows skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
    ceiling_after = matmul_gflops()
    ceiling = max(ceiling_before, ceiling_after)

    date = dt.date.today().isoformat()
    loop = f"{args.iters} timed steps" if args.iters else f"{args.seconds or 3:g} s per measurement (>= 10 steps)"
    result = {
        "date": date,
        "shape": "x".join(map(str, shape)),
        "threads": threads,
        "iterations_note": f"{args.warmup} warm-up steps, {loop}",
        "small_configs": args.small,
        "matmul_gflops": ceiling,
        "matmul_gflops_runs": [ceiling_before, ceiling_after],
        "environment": suite.environment,
        "records": [r.to_dict() for r in suite.records],
        "segnet_unpooling": segnet,
        "trt_records": trt_records,
    }
    json_path = write_text_atomic(args.out / f"cpu-{date}.json", json.dumps(result, indent=2) + "\n")
    md_path = write_text_atomic(args.out / "cpu.md", markdown(result))
    print(markdown(result))
    print(f"wrote {json_path} and {md_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
