"""Is ``segdeploy eval`` bounded by the model? Its images/s against ``segdeploy bench``'s throughput, one file.

Writes a labeled set of N JPEG images (synthetic shapes, H x W) with PNG masks into a temporary
directory, exports (or takes from the cache) one zoo model, then in one process, with the same thread
count:

1. ``segdeploy bench``'s ONNX Runtime throughput for the file at 1x3xHxW (``run_benchmarks``),
2. ``segdeploy eval`` over the set (``evaluate``: decoding, the frame pipeline, the model, argmax,
   confusion matrices), wall clock from the first image to the scores, images/s,
3. the bench throughput again (the machine drifts: the two are averaged),
4. what eval adds besides the model, alone: decoding an image and its mask, the frame pipeline both
   ways and the confusion matrix, on one thread, per image.

Writes ``<out>/eval_speed.json`` and ``<out>/eval_speed.md``. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
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


def bench_throughput(onnx: Path, size: int, threads: int, seconds: float) -> dict[str, float]:
    from segdeploy.bench import run_benchmarks

    suite = run_benchmarks([str(onnx)], ["ort"], shape=(1, 3, size, size), seconds=seconds, threads=threads)
    record = suite.records[0]
    return {"images_per_s": record.throughput, "mean_ms": record.latency.mean}


def eval_throughput(onnx: Path, images: Path, masks: Path, threads: int) -> dict[str, Any]:
    from segdeploy.datasets import DatasetSpec
    from segdeploy.evaluate import evaluate

    spec = DatasetSpec("pairs", images, masks=masks)
    count = len(spec.open())
    start = time.perf_counter()
    result = evaluate([str(onnx)], spec, threads=threads, worst=5)
    seconds = time.perf_counter() - start
    return {"images": count, "seconds": seconds, "images_per_s": count / seconds, "miou": result.partial.scores[0].miou}


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
    parser.add_argument("--seconds", type=float, default=10.0, help="per bench measurement")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from segdeploy.cache import cached_onnx

    config = json.loads(args.config)
    onnx = cached_onnx(args.model, config=config, shape=(1, 3, args.size, args.size), num_classes=args.classes)
    with tempfile.TemporaryDirectory() as tmp:
        images, masks = write_set(Path(tmp), args.images, args.size, args.classes)
        before = bench_throughput(onnx, args.size, args.threads, args.seconds)
        evaluated = eval_throughput(onnx, images, masks, args.threads)
        after = bench_throughput(onnx, args.size, args.threads, args.seconds)
        overhead = overhead_per_image(onnx, images, masks, args.classes)
    bench = (before["images_per_s"] + after["images_per_s"]) / 2
    record = {
        "date": dt.date.today().isoformat(),
        "model": args.model,
        "config": config,
        "classes": args.classes,
        "size": args.size,
        "threads": args.threads,
        "cpu": _cpu(),
        "bench_before": before,
        "bench_after": after,
        "eval": evaluated,
        "eval_over_bench": evaluated["images_per_s"] / bench,
        "overhead_ms_per_image": overhead,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_speed.json").write_text(json.dumps(record, indent=2) + "\n")
    (args.out / "eval_speed.md").write_text(markdown(record))
    print(markdown(record))


def markdown(record: dict[str, Any]) -> str:
    ev, over = record["eval"], record["overhead_ms_per_image"]
    before, after = record["bench_before"], record["bench_after"]
    lines = [
        f"Eval speed, {record['date']}: {record['cpu']}, {record['threads']} threads; {record['model']} "
        f"{json.dumps(record['config'])}, {record['classes']} classes, ONNX Runtime, "
        f"{ev['images']} JPEG images {record['size']}x{record['size']} with PNG masks, batch 1.",
        "",
        "| measurement | images/s | ms/image |",
        "|---|---:|---:|",
        f"| bench before eval | {before['images_per_s']:.2f} | {before['mean_ms']:.1f} |",
        f"| eval (decode, pipeline, model, argmax, confusion) | {ev['images_per_s']:.2f} "
        f"| {1000 / ev['images_per_s']:.1f} |",
        f"| bench after eval | {after['images_per_s']:.2f} | {after['mean_ms']:.1f} |",
        "",
        f"eval / bench (mean of before and after): **{record['eval_over_bench']:.1%}**.",
        "",
        "What eval adds besides the model, each part alone on one thread, ms per image: "
        + ", ".join(f"{key.replace('_', ' ')} {value:.1f}" for key, value in over.items())
        + f" (sum {sum(over.values()):.1f}; image and mask decoding run in a thread ahead of the model).",
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
