"""What FP16 costs per zoo architecture, on briefly trained tiny models, in ONNX Runtime on the CPU.

For every zoo model (its test config, 4 classes): train on the synthetic
shapes dataset for a few seconds (same seed for all), export FP32 ONNX with
segdeploy's pipeline, convert it with ``segdeploy.precision.convert_to_fp16``,
and run both in ONNX Runtime on held-out images at 64x64 and at the odd size
57x83. Per architecture: mIoU of each against the labels, the mIoU drift,
argmax agreement FP16 vs FP32, max and 99th-percentile relative error
(``segdeploy.verify.compare`` definitions), the FP16 share of weight bytes and
the nodes kept in FP32.

Random weights would tell little (they sit on near-ties, see docs/verification.md), hence
the training. ONNX Runtime's CPU kernels are not TensorRT's: these numbers say
what FP16 rounding of weights and activations costs, not what a GPU engine does.

Usage: python benchmarks/fp16_drift.py [--seconds 30] [--models segnet,unet] [--out benchmarks/results]
Writes <out>/fp16_drift.md and <out>/fp16_drift.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
NUM_CLASSES = 4
TRAIN_SIZE = (48, 48)
TRAIN_IMAGES = 256
# Held-out sets: the training size and an odd size that is no multiple of 2.
EVAL_SETS = {"64x64": ((64, 64), 8, 1), "57x83": ((57, 83), 4, 2)}  # size, images, seed


def measure(name: str, *, seconds: float, seed: int, train: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Train, export, convert and compare one zoo model; returns one result row."""
    import onnx
    import torch

    from segdeploy.criteria import compare, thresholds_for
    from segdeploy.data import evaluate, make_shapes, train_tiny
    from segdeploy.models import create_model, model_info
    from segdeploy.pipeline import ModelSpec, export_onnx
    from segdeploy.precision import convert_to_fp16, fp16_weight_fraction

    info = model_info(name)
    torch.manual_seed(seed)
    model = create_model(name, num_classes=NUM_CLASSES, **info.test_config)
    history = train_tiny(model, *train, steps=10_000, lr=5e-3, batch_size=8, seconds=seconds, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        started = time.perf_counter()
        export_onnx(model, path, input_shape=(2, 3, *TRAIN_SIZE), spec=ModelSpec(num_classes=NUM_CLASSES), verify=False)
        fp32 = onnx.load(path)
    fp16, kept = convert_to_fp16(fp32)
    export_seconds = time.perf_counter() - started
    nodes = {node.name: node.op_type for node in fp16.graph.node}
    row: dict[str, Any] = {
        "model": name,
        "config": info.test_config,
        "index_unpooling": info.index_unpooling,
        "train_steps": history["steps"],
        "train_seconds": round(history["seconds"], 1),
        "final_loss": float(np.mean(history["losses"][-10:])),
        "export_and_convert_seconds": round(export_seconds, 1),
        "fp16_weight_fraction": fp16_weight_fraction(fp16),
        "kept_fp32": dict(collections.Counter(nodes[n] for n in kept)),
        "kept_fp32_nodes": kept,
        "sets": {},
    }
    fp32_session, fp16_session = _session(fp32), _session(fp16)
    for set_name, (size, count, set_seed) in EVAL_SETS.items():
        images, labels = make_shapes(count, size=size, num_classes=NUM_CLASSES, seed=seed + set_seed)
        reference = fp32_session.run(None, {"input": images})[0]
        candidate = fp16_session.run(None, {"input": images})[0]
        comparison = compare(candidate, reference, None, thresholds_for("fp16"))
        miou32, miou16 = evaluate(reference, labels, NUM_CLASSES), evaluate(candidate, labels, NUM_CLASSES)
        row["sets"][set_name] = {
            "miou_fp32": miou32,
            "miou_fp16": miou16,
            "miou_drift": miou16 - miou32,
            "agreement": comparison.agreement,
            "max_rel_error": comparison.max_rel_error,
            "p99_rel_error": comparison.p99_rel_error,
            "finite": bool(np.isfinite(candidate).all()),
        }
    return row


def _session(model: Any) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the 2-core CI box is shared
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def background_miou(set_name: str, seed: int) -> float:
    """mIoU of predicting background everywhere on a held-out set: what an untrained model scores."""
    from segdeploy.criteria import mean_iou
    from segdeploy.data import make_shapes

    size, count, set_seed = EVAL_SETS[set_name]
    _, labels = make_shapes(count, size=size, num_classes=NUM_CLASSES, seed=seed + set_seed)
    return mean_iou(np.zeros_like(labels), labels, NUM_CLASSES)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The results table, one line per architecture and held-out set."""
    baseline = {name: background_miou(name, meta["seed"]) for name in EVAL_SETS}
    lines = [
        "# FP16 drift per architecture (ONNX Runtime CPU, briefly trained tiny models)",
        "",
        f"Generated by `benchmarks/fp16_drift.py` on {meta['date']}: torch {meta['torch']}, onnx {meta['onnx']}, "
        f"onnxruntime {meta['onnxruntime']}. Each model: test config, {NUM_CLASSES} classes, trained "
        f"{meta['seconds']:g} s on {TRAIN_IMAGES} shapes images at {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]} (seed "
        f"{meta['seed']}); held-out images at 64x64 (8) and 57x83 (4). Errors relative to max |FP32 logit|.",
        "",
        "*learned*: FP32 mIoU beats predicting background everywhere "
        f"({', '.join(f'{v:.4f} on {k}' for k, v in baseline.items())}) by 0.02; where it does not, the model "
        "has not left the all-background solution and its drift numbers say little.",
        "",
        "| model | set | steps | learned | mIoU FP32 | mIoU FP16 | drift | agreement | max rel | p99 rel "
        "| FP16 weight bytes | kept FP32 |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['model']} | failed: {row['error']} | | | | | | | | | | |")
            continue
        kept = ", ".join(f"{op} x{count}" for op, count in sorted(row["kept_fp32"].items())) or "none"
        for set_name, s in row["sets"].items():
            lines.append(
                f"| {row['model']} | {set_name} | {row['train_steps']} "
                f"| {'yes' if s['miou_fp32'] > baseline[set_name] + 0.02 else 'no'} "
                f"| {s['miou_fp32']:.4f} | {s['miou_fp16']:.4f} "
                f"| {s['miou_drift']:+.4f} | {s['agreement']:.5f} "
                f"| {s['max_rel_error']:.2e} | {s['p99_rel_error']:.2e} "
                f"| {row['fp16_weight_fraction']:.4f} | {kept} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import onnx
    import onnxruntime
    import torch

    from segdeploy.data import make_shapes
    from segdeploy.fileio import write_text_atomic
    from segdeploy.models import list_models

    names = [n for n in args.models.split(",") if n] or list_models()
    train = make_shapes(TRAIN_IMAGES, size=TRAIN_SIZE, num_classes=NUM_CLASSES, seed=args.seed)
    rows = []
    for name in names:
        try:
            row = measure(name, seconds=args.seconds, seed=args.seed, train=train)
        except Exception as exc:  # one broken model must not hide the others' numbers
            row = {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "kept_fp32_nodes"}), flush=True)
    meta = {
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "seconds": args.seconds,
        "seed": args.seed,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "fp16_drift.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    write_text_atomic(args.out / "fp16_drift.md", markdown(rows, meta))
    return 0 if all("error" not in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
