"""Time to a verified file: segdeploy's export stages against the stock ``torch.onnx.export``, in one run.

Two measurements, each command in a fresh process (imports and torch's op registry included, as a
user pays them), rounds interleaved so both see the same machine state:

1. per zoo model: ``segdeploy export MODEL --no-verify`` (capture to check) and the verified
   ``segdeploy export MODEL``, against ``torch.onnx.export(model, dynamo=True)`` of the same model
   with the same dynamic axes; targets: stages <= 1.5x stock, verified <= 3x stock;
2. the per-stage seconds of segdeploy's export (from ``--report``).

The machine's 1-minute load average is recorded before and after: on a shared machine the ratios
depend on it (PyTorch's threads wait for CPUs other processes hold). Writes
``benchmarks/results/export_time.{json,md}``.

    python benchmarks/export_time.py --models segnet                   # the main job, 1x3x512x512
    python benchmarks/export_time.py --small --size 64                 # every zoo model, test widths
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

STOCK = """
import sys, warnings, torch
import segdeploy
name, size, small, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
config = segdeploy.model_info(name).test_config if small else {}
model = segdeploy.create_model(name, **config).eval()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), out, dynamo=True, opset_version=17,
                      input_names=["input"], output_names=["logits"], external_data=False, verbose=False,
                      dynamic_shapes=({0: "batch", 2: "height", 3: "width"},))
"""


def _timed(cmd: list[str]) -> tuple[float, bool, str]:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - started, done.returncode == 0, (done.stderr or done.stdout).strip()[-300:]


def measure(name: str, size: int, small: bool, rounds: int, workdir: Path) -> dict:
    from segdeploy.models import model_info

    shape = f"1x3x{size}x{size}"
    config = [
        a
        for key, value in (model_info(name).test_config.items() if small else ())
        for a in ("--config", f"{key}={json.dumps(value)}")
    ]
    segdeploy = [sys.executable, "-m", "segdeploy", "export", name, "--input-shape", shape, *config]
    runs: dict[str, list[float]] = {"stock": [], "stages": [], "verified": []}
    report_path = workdir / f"{name}.json"
    failures = {}
    for _ in range(rounds):  # interleaved: the three see the same machine state
        for kind, cmd in (
            ("stock", [sys.executable, "-c", STOCK, name, str(size), "1" if small else "0", str(workdir / "s.onnx")]),
            ("stages", [*segdeploy, "--no-verify", "-o", str(workdir / "a.onnx")]),
            ("verified", [*segdeploy, "-o", str(workdir / "b.onnx"), "--report", str(report_path)]),
        ):
            seconds, ok, tail = _timed(cmd)
            if ok:
                runs[kind].append(seconds)
            else:
                failures[kind] = tail
    stages = json.loads(report_path.read_text())["stage_seconds"] if report_path.exists() else {}
    median = {k: statistics.median(v) if v else None for k, v in runs.items()}
    ratio = {k: median[k] / median["stock"] if median[k] and median["stock"] else None for k in ("stages", "verified")}
    return {
        "model": name,
        "shape": shape,
        "small": small,
        "runs_s": runs,
        "median_s": median,
        "ratio": ratio,
        "stage_seconds": stages,
        "failures": failures,
    }


def markdown(rows: list[dict], header: str) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [
        header,
        "",
        "| model | stock s | stages s | stages / stock | verified s | verified / stock |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        m, q = r["median_s"], r["ratio"]
        lines.append(
            f"| {r['model']} | {num(m['stock'], '.1f')} | {num(m['stages'], '.1f')} | "
            f"{num(q['stages'], '.2f')}x | {num(m['verified'], '.1f')} | {num(q['verified'], '.2f')}x |"
        )
    stage_names = sorted(
        {k for r in rows for k in r["stage_seconds"]},
        key=lambda k: list(rows[0]["stage_seconds"]).index(k) if k in rows[0]["stage_seconds"] else 99,
    )
    lines += [
        "",
        "Stages of the verified export, seconds (in-process, from `--report`):",
        "",
        "| model | " + " | ".join(stage_names) + " |",
        "|---|" + "---:|" * len(stage_names),
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | " + " | ".join(num(r["stage_seconds"].get(k), ".1f") for k in stage_names) + " |"
        )
    failures = [f"- {r['model']} {kind}: {tail}" for r in rows for kind, tail in r["failures"].items()]
    return "\n".join(lines + (["", "Failures:", *failures] if failures else [])) + "\n"


def main() -> None:
    from segdeploy.models import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--small", action="store_true", help="test widths (smoke runs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            rows.append(measure(name, args.size, args.small, args.rounds, Path(tmp)))
            print(json.dumps(rows[-1]), flush=True)
    load_after = os.getloadavg()[0]
    for row in rows:
        row["load_average"] = [round(load_before, 2), round(load_after, 2)]
    header = (
        f"Export time, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, input 1x3x{args.size}x{args.size}"
        f"{' (test widths)' if args.small else ''}, median of {args.rounds} interleaved rounds, each command "
        f"in a fresh process; 1-minute load average {load_before:.2f} before, {load_after:.2f} after:"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "export_time" + ("_small" if args.small else "")
    (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(rows, header))
    print(markdown(rows, header))


if __name__ == "__main__":
    main()
