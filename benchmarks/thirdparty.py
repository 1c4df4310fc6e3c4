"""Third-party segmentation models: segdeploy's default export against the stock exporter, and the sizes proven.

Tiny configurations with random weights and calibrated BatchNorm (``tests/thirdparty_models.py``; needs
``pip install -e '.[thirdparty]'``), traced at 1x3x128x128, opset 17:

- segdeploy: ``export_onnx`` with defaults (verified, sizes proven or narrowed);
- stock: ``torch.onnx.export(dynamo=True)`` with dynamic batch/height/width and opset 17 asked, then the
  opset it wrote and what segdeploy's TensorRT lint refuses in it, and ONNX Runtime against PyTorch at
  the traced shape and at 2x3x160x96 and 1x3x192x256 ("PyTorch itself raises" where the model does);
- sizes proven: the shapes segdeploy's runs of the written file passed at.

Writes ``benchmarks/results/thirdparty.{json,md}``.

    python benchmarks/thirdparty.py
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TRACE = (1, 3, 128, 128)
STOCK_SHAPES = [(1, 3, 128, 128), (2, 3, 160, 96), (1, 3, 192, 256)]


def _stock(model, path: Path) -> str:
    import numpy as np
    import onnxruntime as ort
    import torch

    from segdeploy.errors import first_line

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model, (torch.randn(2, 3, 128, 128),), str(path), dynamo=True, opset_version=17,
                input_names=["input"], output_names=["logits"], external_data=False, verbose=False,
                dynamic_shapes=({0: "batch", 2: "height", 3: "width"},),
            )  # fmt: skip
    except Exception as exc:
        return f"no file: {type(exc).__name__}: {_plain(first_line(exc))[:120]}"
    written = _written(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    verdicts = []
    for shape in STOCK_SHAPES:
        x = torch.randn(shape)
        try:
            with torch.no_grad():
                expected = model(x).numpy()
        except Exception:
            verdicts.append("PyTorch itself raises")
            continue
        try:
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            rel = float(np.abs(got - expected).max() / np.abs(expected).max())
            verdicts.append("exact" if rel <= 1e-3 else f"wrong (rel {rel:.2g})")
        except Exception:
            verdicts.append("fails")
    runs = ", ".join(f"{'x'.join(map(str, s))} {v}" for s, v in zip(STOCK_SHAPES, verdicts))
    return f"{written}; {runs}" if written else runs


def _written(path: Path) -> str:
    """Beyond its runs: an opset other than the one asked for, and what TensorRT's lint refuses in the file."""
    import onnx

    from segdeploy.export.lint import lint_onnx
    from segdeploy.export.opset import default_opset

    proto = onnx.load(str(path))
    notes = []
    if default_opset(proto) != 17:
        notes.append(f"opset {default_opset(proto)} written (17 asked)")
    refused = sorted({issue.op_type for issue in lint_onnx(proto, checker=False).errors})
    if refused:
        notes.append(f"TensorRT lint refuses {', '.join(refused)}")
    return "; ".join(notes)


def _segdeploy(model, path: Path) -> tuple[str, str]:
    from segdeploy import export_onnx
    from segdeploy.errors import SegdeployError
    from segdeploy.shapes import format_shape

    try:
        result = export_onnx(model, path, input_shape=TRACE, opset=17)
    except SegdeployError as exc:
        return f"exit {exc.exit_code}: {str(exc)[:160]}", "-"
    rule = result.size_rule
    verdict = f"verified; {rule.describe()}"
    if rule.narrowed:
        verdict += f" (narrowed: {_short(rule.narrowed)})"
    proven = [format_shape(r.shape) for r in result.verification.results if r.passed]
    return verdict, ", ".join(proven)


def _plain(text: str) -> str:
    """Without the terminal colour codes torch's exporter puts in its messages."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _short(reason: str, limit: int = 90) -> str:
    """A narrowing reason for a table cell: the guard's expression shortened, its source line kept whole,
    then the shape the file failed at and the start of why."""
    guard, _, fails = reason.partition(", and the file fails at ")
    if not fails:  # no guard explains the failure: the reason starts with the failing shape
        guard, fails = "", reason.removeprefix("the file fails at ")
    cut = lambda text: text if len(text) <= limit else text[: limit - 3] + "..."
    failing = f"fails at {cut(fails)}"
    match = re.match(r"^the capture specialized on the input size at (.*) \(([^()]+\.py:\d+ in \w+)\)$", guard)
    if not match:
        return f"{cut(guard)}; {failing}" if guard else failing
    what, where = match.groups()
    return f"guard {cut(what)} at {where}; {failing}"


def main() -> None:
    import torch
    from helpers import calibrate_batchnorm
    from thirdparty_models import MODELS, prepare

    prepare()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in MODELS.items():
            torch.manual_seed(0)
            model = calibrate_batchnorm(build(), (2, 3, 128, 128))
            started = time.perf_counter()
            ours, proven = _segdeploy(model, Path(tmp) / "ours.onnx")
            seconds = time.perf_counter() - started
            stock = _stock(model, Path(tmp) / "stock.onnx")
            rows.append({"model": name, "segdeploy": ours, "s": round(seconds, 1), "stock": stock, "proven": proven})
            print(json.dumps(rows[-1]), flush=True)
    write(rows, time.strftime("%Y-%m-%d"))


def write(rows: list[dict], day: str) -> None:
    """``results/thirdparty.json`` and the table ``results/thirdparty.md`` from the rows of one run."""
    header = (
        f"Third-party models, {day}, tiny configurations with random weights and calibrated "
        f"BatchNorm, traced at {'x'.join(map(str, TRACE))}, opset 17 (`python benchmarks/thirdparty.py`, all rows in "
        "one run on a 2-core machine shared with other jobs: export seconds are noisy):"
    )
    lines = [header, "", "| model | segdeploy default | stock exporter | sizes proven |", "|---|---|---|---|"]
    for r in rows:
        cells = [r["model"], f"{r['segdeploy']} ({r['s']:.0f} s)", r["stock"], r["proven"]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += ["", "What limits each model, and what makes it export: docs/export.md, section Third-party models."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "thirdparty.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "thirdparty.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
