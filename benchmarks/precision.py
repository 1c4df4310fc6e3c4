"""What FP16 and INT8 cost per zoo architecture, on briefly trained tiny models, in ONNX Runtime on the CPU.

For every zoo model (its test config, 4 classes): train on the synthetic
shapes data with ``segdeploy.data``'s recipe, export FP32 ONNX with segdeploy's
pipeline (``export_onnx(..., verify=False)``), convert it to FP16 (the
conversion ``--precision fp16`` runs), quantize it to INT8 with
``segdeploy.quantize`` (ONNX Runtime backend; ModelOpt too when importable),
and run every file in ONNX Runtime on held-out images at the trace size and at
an odd size. Per architecture and file: mIoU against the labels, argmax
agreement with FP32 and the relative errors of ``segdeploy.criteria.compare``;
for models with index unpooling (SegNet) the share of 2x2 unpooling windows
whose chosen slot differs from FP32's (read from the rewrite's masks).

Two known-bad INT8 files are measured next to the good ones, so the verify
thresholds can be shown to reject them:

- ``int8-ort-defaults``: ONNX Runtime's own defaults (every supported op
  quantized, INT32 biases): Q/DQ lands on SegNet's unpooling comparisons;
- ``int8-bad-calib``: our placement, calibrated on images that skipped the
  normalisation (pixels in [0, 1]): the activation ranges are wrong.

ONNX Runtime's CPU kernels are not TensorRT's: these numbers say what the
rounding of FP16 and the Q/DQ placement cost, not what a GPU engine runs.

Usage: python benchmarks/precision.py [--models unet,segnet] [--steps 600] [--out benchmarks/results]
Writes <out>/precision.md and <out>/precision.json.
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
NUM_CLASSES = 4
TRAIN_SIZE = (64, 64)
TRAIN_IMAGES = 256
CALIB_IMAGES = 64
# Held-out sets: the trace size and an odd size; (size, images, seed offset).
EVAL_SETS = {"64x64": ((64, 64), 16, 1), "71x97": ((71, 97), 8, 2)}
CALIB_SEED_OFFSET = 100
LEARNED_MARGIN = 0.05  # "learned": held-out FP32 mIoU beats all-background by this much
GOOD_FILES = ("fp16", "int8", "int8-modelopt")
BAD_FILES = ("int8-ort-defaults", "int8-bad-calib")


def measure(name: str, *, steps: int, seconds: float | None, seed: int, quantizers: list[str]) -> dict[str, Any]:
    """Train, export, convert, quantize and compare one zoo model; returns one result row."""
    import onnx
    import torch

    from segdeploy.criteria import compare
    from segdeploy.data import evaluate, make_shapes, train_tiny
    from segdeploy.export.lint import lint_onnx
    from segdeploy.models import create_model, model_info
    from segdeploy.pipeline import ModelSpec, export_onnx
    from segdeploy.precision import convert_to_fp16
    from segdeploy.quantize import quantize_int8
    from segdeploy.verify import verification_shapes

    info = model_info(name)
    torch.manual_seed(seed)
    model = create_model(name, num_classes=NUM_CLASSES, **info.test_config)
    images, labels = make_shapes(TRAIN_IMAGES, size=TRAIN_SIZE, num_classes=NUM_CLASSES, seed=seed)
    history = train_tiny(model, images, labels, steps=steps, seconds=seconds, seed=seed)
    calibration = make_shapes(CALIB_IMAGES, size=TRAIN_SIZE, num_classes=NUM_CLASSES, seed=seed + CALIB_SEED_OFFSET)[0]
    row: dict[str, Any] = {
        "model": name,
        "config": info.test_config,
        "index_unpooling": info.index_unpooling,
        "train_steps": history["steps"],
        "train_seconds": round(history["seconds"], 1),
        "final_loss": float(np.mean(history["losses"][-10:])),
        "lint": {},
        "seconds": {},
        "sets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.onnx"
        started = time.perf_counter()
        export_onnx(model, path, input_shape=(2, 3, *TRAIN_SIZE), spec=ModelSpec(num_classes=NUM_CLASSES), verify=False)
        fp32 = onnx.load(path)
        row["seconds"]["export"] = round(time.perf_counter() - started, 1)
    files = {"fp32": fp32}
    started = time.perf_counter()
    files["fp16"] = convert_to_fp16(fp32)[0]
    row["seconds"]["fp16"] = round(time.perf_counter() - started, 1)
    for quantizer in quantizers:
        key = "int8" if quantizer == "ort" else f"int8-{quantizer}"
        try:
            files[key], report = quantize_int8(fp32, calibration, quantizer=quantizer)
            row["seconds"][key] = round(report.seconds, 1)
            row.setdefault("quantization", {})[key] = report.summary()
        except Exception as exc:  # one backend failing must not hide the others
            row.setdefault("failed", {})[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    raw_pixels = np.clip(calibration * 0.25 + 0.5, 0.0, 1.0).astype(np.float32)  # undo the dataset's normalisation
    bad = {
        "int8-ort-defaults": lambda: _ort_defaults(fp32, calibration),
        "int8-bad-calib": lambda: quantize_int8(fp32, raw_pixels)[0],
    }
    for key, make in bad.items():
        try:
            files[key] = make()
        except Exception as exc:  # ModelOpt patches ONNX Runtime's quantizer in its process: the defaults may fail
            row.setdefault("failed", {})[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for key, proto in files.items():
        if key != "fp32":
            report = lint_onnx(proto)
            row["lint"][key] = {"ok": report.ok, "qdq_rules": sorted({i.rule for i in report.issues if i.rule})}
    probes = {key: _probe(proto, info.index_unpooling) for key, proto in files.items()}
    for set_name, (size, count, offset) in EVAL_SETS.items():
        x, y = make_shapes(count, size=size, num_classes=NUM_CLASSES, seed=seed + offset)
        outputs = {key: _run(session, x) for key, session in probes.items()}
        reference, reference_masks = outputs["fp32"]
        results = {"fp32": {"miou": evaluate(reference, y, NUM_CLASSES)}}
        for key, (logits, masks) in outputs.items():
            if key == "fp32":
                continue
            comparison = compare(logits, reference)
            entry = {
                "miou": evaluate(logits, y, NUM_CLASSES),
                "agreement": comparison.agreement,
                "max_rel_error": comparison.max_rel_error,
                "p99_rel_error": comparison.p99_rel_error,
            }
            if masks:
                entry["unpool_windows_changed"] = _windows_changed(reference_masks, masks)
            results[key] = entry
        row["sets"][set_name] = results
    # What `segdeploy verify` feeds: seeded normal(0, 1) noise at the trace shape, an odd size and batch 2.
    rng = np.random.default_rng(0)
    row["verify_inputs"] = {}
    for shape in verification_shapes((2, 3, *TRAIN_SIZE), min_size=info.min_size):
        x = rng.standard_normal(shape, dtype=np.float32)
        outputs = {key: _run(session, x) for key, session in probes.items()}
        reference, reference_masks = outputs["fp32"]
        results = {}
        for key, (logits, masks) in outputs.items():
            if key == "fp32":
                continue
            comparison = compare(logits, reference)
            results[key] = {
                "agreement": comparison.agreement,
                "max_rel_error": comparison.max_rel_error,
                "p99_rel_error": comparison.p99_rel_error,
            }
            if masks:
                results[key]["unpool_windows_changed"] = _windows_changed(reference_masks, masks)
        row["verify_inputs"]["x".join(map(str, shape))] = results
    return row


def _ort_defaults(fp32: Any, calibration: np.ndarray) -> Any:
    """ONNX Runtime's quantize_static with its defaults (symmetric int8 QDQ): the known-bad placement."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    logging.getLogger().setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(fp32, Path(tmp) / "fp32.onnx")
        quantize_static(
            str(Path(tmp) / "fp32.onnx"),
            str(Path(tmp) / "int8.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True},
        )
        return onnx.load(str(Path(tmp) / "int8.onnx"))


def _probe(proto: Any, index_unpooling: bool) -> tuple[Any, list[str]]:
    """An ORT session whose extra outputs are the unpooling masks (the Where conditions of the rewrite)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    masks = []
    if index_unpooling:
        producer = {out: node for node in probe.graph.node for out in node.output}
        for node in probe.graph.node:
            # The rewrite's one Where per unpooling takes the stacked one-hot masks (bool, via Concat/Unsqueeze).
            if (
                node.op_type == "Where"
                and (src := producer.get(node.input[0])) is not None
                and src.op_type
                in (
                    "Concat",
                    "Unsqueeze",
                    "Reshape",
                )
            ):
                masks.append(node.input[0])
        outputs = {v.name for v in probe.graph.output}
        probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(m) for m in masks if m not in outputs)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session, masks


def _run(probe: tuple[Any, list[str]], x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    session, masks = probe
    values = session.run(["logits", *masks], {"input": x})
    return values[0], values[1:]


def _windows_changed(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Share of unpooling windows (all stages) whose chosen slot differs; masks are [N, C, k*k, h, w]."""
    changed = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        differs = np.any(ref != cand, axis=2)
        changed += int(differs.sum())
        total += differs.size
    return changed / total if total else 0.0


def background_miou(set_name: str, seed: int) -> float:
    """mIoU of predicting background everywhere on a held-out set: what an untrained model scores."""
    from segdeploy.criteria import mean_iou
    from segdeploy.data import make_shapes

    size, count, offset = EVAL_SETS[set_name]
    _, labels = make_shapes(count, size=size, num_classes=NUM_CLASSES, seed=seed + offset)
    return mean_iou(np.zeros_like(labels), labels, NUM_CLASSES)


def summarize(rows: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """Worst values per file kind over the models that learned: what the thresholds are set against.

    Returns:
        ``{"baseline": {set: mIoU}, "worst": {"images" | "verify inputs": {"file/kind": {...}}}}``.
    """
    baseline = {name: background_miou(name, seed) for name in EVAL_SETS}
    worst: dict[str, dict[str, dict[str, Any]]] = {"images": {}, "verify inputs": {}}
    for row in rows:
        if "sets" not in row or not _learned(row, baseline):
            continue
        kind_of = f"/{'unpool' if row['index_unpooling'] else 'plain'}"
        sources = (("images", row["sets"]), ("verify inputs", row.get("verify_inputs", {})))
        for source, sets in sources:
            for set_name, results in sets.items():
                for key, entry in results.items():
                    if key == "fp32":
                        continue
                    values = {
                        "agreement": (entry["agreement"], min),
                        "p99_rel_error": (entry["p99_rel_error"], max),
                        "max_rel_error": (entry["max_rel_error"], max),
                    }
                    if "miou" in entry:
                        values["miou_drop"] = (results["fp32"]["miou"] - entry["miou"], max)
                    if "unpool_windows_changed" in entry:
                        values["unpool_windows_changed"] = (entry["unpool_windows_changed"], max)
                    w = worst[source].setdefault(key + kind_of, {"at": {}})
                    for metric, (value, pick) in values.items():
                        if metric not in w or pick(w[metric], value) != w[metric]:
                            w[metric] = value
                            w["at"][metric] = f"{row['model']} {set_name}"
    return {"baseline": baseline, "worst": worst}


def _learned(row: dict[str, Any], baseline: dict[str, float]) -> bool:
    return all(s["fp32"]["miou"] > baseline[n] + LEARNED_MARGIN for n, s in row["sets"].items())


def verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each file judged as ``segdeploy verify`` judges it: worst over the verify-input shapes, against
    ``thresholds_for(precision, index_unpooling)``; the worst over the image sets beside it."""
    from segdeploy.criteria import thresholds_for

    table = []
    for row in rows:
        for key in [*GOOD_FILES, *BAD_FILES]:
            by_source = {}
            for source, sets in (("images", row.get("sets", {})), ("verify", row.get("verify_inputs", {}))):
                entries = [results[key] for results in sets.values() if key in results]
                if entries:
                    by_source[source] = (
                        min(e["agreement"] for e in entries),
                        max(e["p99_rel_error"] for e in entries),
                        max(e["max_rel_error"] for e in entries),
                    )
            if "verify" not in by_source:
                continue
            precision = "fp16" if key == "fp16" else "int8"
            t = thresholds_for(precision, index_unpooling=row["index_unpooling"])
            agreement, p99, max_rel = by_source["verify"]
            passed = (
                agreement >= t.min_agreement
                and (t.p99_rel_error is None or p99 <= t.p99_rel_error)
                and (t.max_rel_error is None or max_rel <= t.max_rel_error)
            )
            table.append(
                {
                    "model": row["model"],
                    "file": key,
                    "known_bad": key in BAD_FILES,
                    "passes": passed,
                    "criteria": t,
                    **{
                        f"{src}_{m}": v
                        for src, vals in by_source.items()
                        for m, v in zip(("agreement", "p99", "max_rel"), vals, strict=True)
                    },
                }
            )
    return table


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], summary: dict[str, Any]) -> str:
    """One table per architecture, then the worst values per file kind."""
    baseline = summary["baseline"]
    lines = [
        "# FP16 and INT8 per architecture (ONNX Runtime CPU, briefly trained tiny models)",
        "",
        f"Generated by `benchmarks/precision.py` on {meta['date']}: torch {meta['torch']}, onnx {meta['onnx']}, "
        f"onnxruntime {meta['onnxruntime']}; {meta['command']}. Each model: test config, {NUM_CLASSES} classes, "
        f"trained with `segdeploy.data.train_tiny` ({meta['steps']} steps at most) on {TRAIN_IMAGES} shapes images "
        f"at {TRAIN_SIZE[0]}x{TRAIN_SIZE[1]} (seed {meta['seed']}); exported at 2x3x{TRAIN_SIZE[0]}x{TRAIN_SIZE[1]} "
        f"(opset 17, dynamic N/H/W); INT8 calibrated on {CALIB_IMAGES} other images; held-out images at "
        + ", ".join(f"{k} ({v[1]})" for k, v in EVAL_SETS.items())
        + ". Agreement and errors are against the FP32 file in ONNX Runtime; errors relative to max |FP32 logit|.",
        "",
        "All-background mIoU: "
        + ", ".join(f"{v:.4f} on {k}" for k, v in baseline.items())
        + f"; *learned* means FP32 beats it by {LEARNED_MARGIN} on every set.",
        "",
        (
            "Files: `fp16` = the FP32 file through `segdeploy.precision.convert_to_fp16` (what `--precision fp16` "
            "runs); `int8` = segdeploy's quantizer (ONNX Runtime backend); "
            "`int8-modelopt` = ModelOpt, where installed; known-bad: `int8-ort-defaults` (ONNX Runtime's default "
            "placement: every op it supports, INT32 biases) and `int8-bad-calib` (segdeploy's placement, "
            "calibrated on unnormalised pixels)."
        ),
        "",
        "What the numbers say and the verify thresholds drawn from them: [docs/int8.md](../../docs/int8.md).",
        "",
    ]
    for row in rows:
        lines.append(f"## {row['model']}")
        lines.append("")
        if "sets" not in row:
            lines += [f"failed: {row.get('error')}", ""]
            continue
        learned = _learned(row, baseline)
        lines.append(
            f"config {row['config']}; {row['train_steps']} steps in {row['train_seconds']} s, final loss "
            f"{row['final_loss']:.3f}; learned: {'yes' if learned else 'NO'}; export {row['seconds'].get('export')} s."
        )
        if row.get("failed"):
            lines.append("Failed: " + "; ".join(f"{k}: {v}" for k, v in row["failed"].items()))
        lint = ", ".join(
            f"{k} {'ok' if v['ok'] else 'FAILS'}" + (f" ({', '.join(v['qdq_rules'])})" if v["qdq_rules"] else "")
            for k, v in row["lint"].items()
        )
        lines += [f"Lint: {lint}.", ""]
        unpool = row["index_unpooling"]
        header = "| file | set | mIoU | drift | agreement | max rel | p99 rel |"
        header += " windows changed |" if unpool else ""
        lines += [header, "|" + " --- |" * 2 + " ---: |" * (5 + int(unpool))]
        for set_name, results in row["sets"].items():
            fp32_miou = results["fp32"]["miou"]
            lines.append(f"| fp32 | {set_name} | {fp32_miou:.4f} | | | | |" + (" |" if unpool else ""))
            for key, e in results.items():
                if key == "fp32":
                    continue
                line = (
                    f"| {key} | {set_name} | {e['miou']:.4f} | {e['miou'] - fp32_miou:+.4f} | {e['agreement']:.5f} "
                    f"| {e['max_rel_error']:.2e} | {e['p99_rel_error']:.2e} |"
                )
                if unpool:
                    line += f" {e.get('unpool_windows_changed', 0.0):.2%} |"
                lines.append(line)
        lines += ["", "On the inputs `segdeploy verify` feeds (seeded normal noise; no labels, so no mIoU):", ""]
        lines += [
            "| file | shape | agreement | max rel | p99 rel |" + (" windows changed |" if unpool else ""),
            "| --- | --- |" + " ---: |" * (3 + int(unpool)),
        ]
        for shape, results in row.get("verify_inputs", {}).items():
            for key, e in results.items():
                line = (
                    f"| {key} | {shape} | {e['agreement']:.5f} | {e['max_rel_error']:.2e} | {e['p99_rel_error']:.2e} |"
                )
                if unpool:
                    line += f" {e.get('unpool_windows_changed', 0.0):.2%} |"
                lines.append(line)
        lines.append("")
    for source, kinds in summary["worst"].items():
        lines += [
            f"## Worst values over the models that learned: {source}",
            "",
            (
                "| file / model kind | min agreement | max p99 rel | max max rel | max mIoU drop | max windows changed "
                "| where (agreement; p99) |"
            ),
            "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for kind, w in sorted(kinds.items()):
            drop = f"{w['miou_drop']:+.4f}" if "miou_drop" in w else ""
            windows = f"{w['unpool_windows_changed']:.2%}" if "unpool_windows_changed" in w else ""
            lines.append(
                f"| {kind} | {w['agreement']:.5f} | {w['p99_rel_error']:.2e} | {w['max_rel_error']:.2e} "
                f"| {drop} | {windows} | {w['at'].get('agreement', '')}; {w['at'].get('p99_rel_error', '')} |"
            )
        lines.append("")
    lines += [
        "## Verdicts under the verify thresholds",
        "",
        (
            "Each file judged as `segdeploy verify` judges it (worst over its noise inputs at the three verification "
            "shapes) against `segdeploy.criteria.thresholds_for`; the worst over the image sets beside it. Every good "
            "file should pass and every known-bad one fail."
        ),
        "",
        (
            "| model | file | verify: agreement | verify: p99 rel | verify: max rel | images: agreement "
            "| images: p99 rel | thresholds | verdict |"
        ),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for v in verdicts(rows):
        t = v["criteria"]
        bounds = [f"agreement >= {t.min_agreement:g}"]
        bounds += [f"p99 <= {t.p99_rel_error:g}"] if t.p99_rel_error is not None else []
        bounds += [f"max rel <= {t.max_rel_error:g}"] if t.max_rel_error is not None else []
        verdict = ("passes" if v["passes"] else "FAILS") + (" (known bad)" if v["known_bad"] else "")
        lines.append(
            f"| {v['model']} | {v['file']} | {v['verify_agreement']:.4f} | {v['verify_p99']:.2e} "
            f"| {v['verify_max_rel']:.2e} "
            f"| {v.get('images_agreement', float('nan')):.4f} | {v.get('images_p99', float('nan')):.2e} "
            f"| {', '.join(bounds)} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated zoo names (default: every registered model)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    parser.add_argument("--seconds", type=float, default=None, help="optional training time cap per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="rewrite <out>/precision.md from this precision.json (no training), e.g. after "
        "changing the verify thresholds",
    )
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out)

    import onnx
    import onnxruntime
    import torch

    from segdeploy.data import TRAIN_STEPS
    from segdeploy.fileio import write_text_atomic
    from segdeploy.models import list_models
    from segdeploy.quantize import modelopt_available

    torch.set_num_threads(1)
    names = [n for n in args.models.split(",") if n] or list_models()
    steps = args.steps or TRAIN_STEPS
    quantizers = ["ort", *(["modelopt"] if modelopt_available() else [])]
    rows = []
    for name in names:
        try:
            row = measure(name, steps=steps, seconds=args.seconds, seed=args.seed, quantizers=quantizers)
        except Exception as exc:  # one broken model must not hide the others' numbers
            row = {"model": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    meta = {
        "date": dt.date.today().isoformat(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "steps": steps,
        "seconds": args.seconds,
        "seed": args.seed,
        "quantizers": quantizers,
        "command": "`python benchmarks/precision.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
    }
    summary = summarize(rows, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(
        args.out / "precision.json", json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=2) + "\n"
    )
    write_text_atomic(args.out / "precision.md", markdown(rows, meta, summary))
    return 0 if all("error" not in row for row in rows) else 1


def render(source: Path, out: Path) -> int:
    """Rewrite the Markdown from a saved JSON: the same rows, the current thresholds."""
    from segdeploy.fileio import write_text_atomic

    data = json.loads(source.read_text())
    summary = summarize(data["rows"], data["meta"]["seed"])
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "precision.md", markdown(data["rows"], data["meta"], summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
