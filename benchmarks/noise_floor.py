"""How far correct and wrong ONNX files sit from the float64 model, in units of PyTorch's own float32 error.

For every zoo model (small test configuration, BatchNorm statistics calibrated on random batches, as a
trained model has them) this exports with segdeploy and measures, at the three verification shapes:

- the noise floor: max |PyTorch float32 - PyTorch float64|;
- segdeploy's file: max |ONNX Runtime - float64| / floor;
- wrong files: the classifier's weights scaled by 1.01, and the last Resize switched to align_corners.

The verification multiple (``segdeploy.criteria.NOISE_MULTIPLE``) must sit between the two groups
with margin on both sides. Writes ``benchmarks/results/noise_floor.{json,md}``.

    python benchmarks/noise_floor.py                 # every zoo model (about 10 min on 2 cores)
    python benchmarks/noise_floor.py --models unet,pspnet
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import calibrate_batchnorm

from segdeploy.artifact import read_metadata
from segdeploy.criteria import NOISE_MULTIPLE
from segdeploy.models import create_model, list_models, model_info
from segdeploy.pipeline import export_onnx
from segdeploy.verify import verification_shapes, verify

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = (1, 3, 64, 64)


def _edit(path: Path, out: Path, kind: str) -> Path | None:
    proto = onnx.load(str(path))
    nodes = proto.graph.node
    if kind == "classifier x1.01":
        conv = [n for n in nodes if n.op_type == "Conv"][-1]
        for init in proto.graph.initializer:
            if init.name in conv.input[1:]:
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    else:
        resizes = [n for n in nodes if n.op_type == "Resize"]
        if not resizes:
            return None
        attrs = resizes[-1].attribute
        for attr in attrs:
            if attr.name == "coordinate_transformation_mode":
                attrs.remove(attr)
                break
        attrs.append(onnx.helper.make_attribute("coordinate_transformation_mode", "align_corners"))
    onnx.save(proto, str(out))
    return out


def measure(name: str, workdir: Path) -> dict:
    torch.manual_seed(0)
    model = calibrate_batchnorm(create_model(name, num_classes=5, **model_info(name).test_config), (4, 3, 64, 64))
    path = workdir / f"{name}.onnx"
    started = time.perf_counter()
    result = export_onnx(model, path, input_shape=SHAPE, verify=False)
    meta = read_metadata(path)
    shapes = verification_shapes(SHAPE, result.size_rule.min_size, result.size_rule.multiple)
    row = {"model": name, "export_s": round(time.perf_counter() - started, 1), "files": {}}
    candidates = {"segdeploy": path}
    for kind in ("classifier x1.01", "align_corners"):
        edited = _edit(path, workdir / f"{name}-{kind.split()[0]}.onnx", kind)
        if edited is not None:
            candidates[kind] = edited
    for kind, file in candidates.items():
        report = verify(file, model, shapes=shapes, metadata=meta)
        row["files"][kind] = {
            "passed": report.passed,
            "ratios": [r.ratio for r in report.results],
            "floors": [r.floor for r in report.results],
        }
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        f"Noise-floor ratios (error vs float64 / PyTorch's own float32 error; limit {NOISE_MULTIPLE:g}x), "
        "worst of 3 shapes, BatchNorm-calibrated test configurations:",
        "",
        "| model | floor (max abs) | segdeploy | classifier x1.01 | align_corners |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        files = row["files"]

        def cell(kind: str, files: dict = files) -> str:
            if kind not in files:
                return "-"
            return f"{max(files[kind]['ratios']):.3g}x" + ("" if files[kind]["passed"] else " (fails)")

        floor = max(files["segdeploy"]["floors"])
        lines.append(
            f"| {row['model']} | {floor:.2g} | {cell('segdeploy')} | {cell('classifier x1.01')} | "
            f"{cell('align_corners')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(measure(name, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_floor.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "noise_floor.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
