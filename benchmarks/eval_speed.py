"""Is ``segdeploy eval`` bounded by the model? Its images/s against ``segdeploy bench``'s throughput, one file.

Writes a labeled set of N JPEG images (synthetic shapes, H x W) with PNG masks into a temporary
directory and takes one zoo model from the export cache. Then, in one process and with one thread
count, rounds alternate between

- ``segdeploy bench``'s measurement (``segdeploy.bench.benchmark``: timed steps of the ONNX Runtime
  runner on one 1x3xHxW batch), and
- ``segdeploy eval``'s loop (``evaluate.Evaluator.run``: decoding, the frame pipeline, the model,
  argmax, confusion matrices) over the next slice of the set,

with a last bench after the last slice. A slice's ratio is its images/s over the mean of the benches
around it: on a shared machine whose speed drifts by tens of percent within minutes, neighbouring
measurements see the same machine. Reported: the median ratio, and the whole set's images/s over the
mean of all benches. Also timed, alone and on one thread: what eval adds besides the model per image.

Writes ``<out>/eval_speed.json`` and ``<out>/eval_speed.md``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def write_set(root: Path, count: int, size: int, num_classes: int) -> tuple[Path, Path]:
    """``count`` JPEG images with PNG masks (the shapes' classes), as a user's labeled set lies on disk."""
    import cv2

    from segdeploy.data import make_shapes

    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(count):
        pixels, labels = make_shapes(1, size=(size, size), num_classes=min(num_classes, 7), seed=i)
        rgb = np.clip((pixels[0] * 0.25 + 0.5) * 255, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        cv2.imwrite(str(images / f"{i:05d}.jpg"), rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        cv2.imwrite(str(masks / f"{i:05d}.png"), labels[0].astype(np.uint8))
    return images, masks


def measure(onnx: Path, images: Path, masks: Path, size: int, rounds: int, threads: int, steps: int) -> dict[str, Any]:
    """Alternate bench measurements and eval slices; per-slice ratios and the totals."""
    from segdeploy.bench import benchmark
    from segdeploy.candidates import resolve_candidates
    from segdeploy.datasets import DatasetSpec
    from segdeploy.evaluate import EvalOptions, EvalPartial, Evaluator
    from segdeploy.pixels import MaskReader
    from segdeploy.runtime import open_runner

    samples = DatasetSpec("pairs", images, masks=masks).open().samples
    specs = resolve_candidates([str(onnx)])
    options = EvalOptions(specs[0].num_classes, MaskReader())
    slices = [samples[i * len(samples) // rounds : (i + 1) * len(samples) // rounds] for i in range(rounds)]
    bench_runner = open_runner(onnx, threads=threads)
    batch = np.random.default_rng(0).standard_normal((1, 3, size, size), dtype=np.float32)
    benches: list[float] = []
    evals: list[dict[str, float]] = []
    merged = EvalPartial.empty(1, options.num_classes, 0)

    def bench() -> None:
        record = benchmark(bench_runner, batch, warmup=1, iters=steps, min_iters=steps, threads=threads)
        benches.append(1000.0 / record.latency.mean)

    with bench_runner, Evaluator(specs, options, threads) as evaluator:
        evaluator.run(slices[0][:2])  # sessions warmed like the bench's, outside the timing
        for piece in slices:
            bench()
            start = time.perf_counter()
            merged.merge(evaluator.run(piece))
            seconds = time.perf_counter() - start
            evals.append({"images": len(piece), "seconds": seconds, "images_per_s": len(piece) / seconds})
        bench()
    ratios = [e["images_per_s"] / ((benches[i] + benches[i + 1]) / 2) for i, e in enumerate(evals)]
    total_images = sum(e["images"] for e in evals)
    total_seconds = sum(e["seconds"] for e in evals)
    return {
        "bench_images_per_s": benches,
        "eval_slices": evals,
        "slice_ratios": ratios,
        "median_ratio": statistics.median(ratios),
        "eval_images": total_images,
        "eval_images_per_s": total_images / total_seconds,
        "bench_mean_images_per_s": statistics.mean(benches),
        "overall_ratio": (total_images / total_seconds) / statistics.mean(benches),
        "miou": merged.scores[0].miou,
    }


def overhead_per_image(onnx: Path, images: Path, masks: Path, num_classes: int, count: int = 30) -> dict[str, float]:
    """Milliseconds per image of what eval does besides running the model, each part alone, on this thread."""
    from segdeploy.artifact import read_metadata
    from segdeploy.frames import FramePipeline
    from segdeploy.metrics import confusion_matrix
    from segdeploy.pixels import MaskReader, read_image

    pipeline = FramePipeline.from_metadata(read_metadata(onnx))
    files = sorted(images.iterdir())[:count]
    parts = {"decode_image": 0.0, "decode_mask": 0.0, "to_input": 0.0, "to_classmap": 0.0, "confusion": 0.0}
    rng = np.random.default_rng(0)
    for file in files:
        t0 = time.perf_counter()
        frame = read_image(file)
        t1 = time.perf_counter()
        truth = MaskReader().read(masks / f"{file.stem}.png")
        t2 = time.perf_counter()
        pipeline.to_input([frame], frame_color="bgr")
        t3 = time.perf_counter()
        logits = rng.standard_normal((1, num_classes, *frame.shape[:2]), dtype=np.float32)
        t4 = time.perf_counter()
        prediction = pipeline.restore(pipeline.to_classmap(logits)[0].astype(np.uint8), frame.shape[:2])
        t5 = time.perf_counter()
        confusion_matrix(prediction, truth, num_classes)
        t6 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t5 - t4, t6 - t5)):
            parts[key] += value
    return {key: 1000 * value / len(files) for key, value in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--config", default='{"width_mult": 0.25}', help="builder options as JSON")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=10, help="eval slices (a bench before each, one after)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per bench measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from segdeploy.pipeline import cached_onnx

    config = json.loads(args.config)
    onnx = cached_onnx(args.model, config=config, shape=(1, 3, args.size, args.size), num_classes=args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        images, masks = write_set(Path(tmp), args.images, args.size, args.classes)
        measured = measure(onnx, images, masks, args.size, args.rounds, args.threads, args.steps)
        overhead = overhead_per_image(onnx, images, masks, args.classes)
    record = {
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "config": config,
        "classes": args.classes,
        "size": args.size,
        "threads": args.threads,
        "cpu": _cpu(),
        "rounds": args.rounds,
        **measured,
        "overhead_ms_per_image": overhead,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "eval_speed.md").write_text(markdown(record))
    print(markdown(record))


def markdown(record: dict[str, Any]) -> str:
    over = record["overhead_ms_per_image"]
    benches = record["bench_images_per_s"]
    lines = [
        f"Eval speed, {record['date']}: {record['cpu']}, {record['threads']} threads; {record['model']} "
        f"{json.dumps(record['config'])}, {record['classes']} classes, ONNX Runtime, "
        f"{record['eval_images']} JPEG images {record['size']}x{record['size']} with PNG masks, batch 1, "
        f"in {record['rounds']} slices alternating with bench measurements.",
        "",
        "| slice | images | eval images/s | bench images/s (before, after) | eval / bench |",
        "|---:|---:|---:|---:|---:|",
    ]
    for i, (piece, ratio) in enumerate(zip(record["eval_slices"], record["slice_ratios"])):
        lines.append(
            f"| {i + 1} | {piece['images']} | {piece['images_per_s']:.2f} | {benches[i]:.2f}, {benches[i + 1]:.2f} "
            f"| {ratio:.1%} |"
        )
    lines += [
        "",
        f"Median eval / bench over the slices: **{record['median_ratio']:.1%}**; the whole set: "
        f"{record['eval_images_per_s']:.2f} images/s against the benches' mean {record['bench_mean_images_per_s']:.2f} "
        f"({record['overall_ratio']:.1%}).",
        "",
        "What eval adds besides the model, each part alone on one thread, ms per image: "
        + ", ".join(f"{key.replace('_', ' ')} {value:.1f}" for key, value in over.items())
        + f" (sum {sum(over.values()):.1f}); decoding runs in a thread ahead of the model, the model in a "
        "thread ahead of the post-processing.",
        "",
    ]
    return "\n".join(lines)


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
