"""The C++ runtime's end-to-end time per frame against ``segdeploy bench --engine ort``'s model-only latency.

One bundle (a zoo model in its small test configuration, float32 NCHW at 512x512, logits), one run: rounds
interleave ``segdeploy bench MODEL.onnx --engine ort --shape 1x3x512x512`` (model only: the tensor is ready, the
output is not read) with ``segdeploy_infer BUNDLE frames.mkv --json`` (end to end: decoding each 512x512 frame of a
lossless video, preprocessing, ONNX Runtime, the class map), sequential (--no-pipeline: one frame at a time, the
latency) and pipelined (decode and preprocess of frame n+1 beside the run of frame n: time per frame is 1 / FPS).
Both use the same ONNX Runtime library and thread count. ONNX Runtime's time depends on the input's values (the
same file ran a few percent apart on bench's random tensor and on video frames), so a third row times the model
alone in Python on the video's own preprocessed frames: like for like with the C++ ONNX Runtime share.

Writes ``benchmarks/results/cpp_vs_ort.{json,md}``.

    python benchmarks/cpp_vs_ort.py                         # unet, 60 frames, 1 thread, 3 rounds
    python benchmarks/cpp_vs_ort.py --model deeplabv3plus --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])}... failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def _bundle(model: str, size: int, work: Path) -> Path:
    import segdeploy
    from segdeploy.bundle import write_bundle
    from segdeploy.pipeline import export_onnx

    net = segdeploy.create_model(model, **segdeploy.model_info(model).test_config).eval()
    onnx_path = work / f"{model}.onnx"
    export_onnx(net, onnx_path, input_shape=(1, 3, size, size), opset=17)
    return write_bundle(onnx_path, work / "bundle", name=model)


def _video(path: Path, frames: int, size: int) -> None:
    import cv2

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 25.0, (size, size))
    base = cv2.GaussianBlur(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), (31, 31), 8)
    for i in range(frames):
        writer.write(np.roll(base, 7 * i, axis=1))
    writer.release()


def _frame_inputs(bundle: Path, video: Path) -> list[np.ndarray]:
    """The video's frames as model inputs, preprocessed as the bundle's manifest says."""
    import cv2

    from segdeploy.bundle.triton_client import prepare

    manifest = json.loads((bundle / "segdeploy.json").read_text())
    capture, inputs = cv2.VideoCapture(str(video)), []
    while (frame := capture.read()[1]) is not None:
        inputs.append(prepare(manifest["pipeline"], frame))
    return inputs


def _python_on_frames(bundle: Path, inputs: list[np.ndarray], threads: int) -> float:
    """Model-only p50 (ms) of ONNX Runtime in Python on ``inputs``, in a fresh session."""
    import time

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    times = []
    for i, batch in enumerate(inputs[:5] + inputs):  # the first five again as warm-up
        started = time.perf_counter()
        session.run(None, {name: batch})
        if i >= 5:
            times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="unet")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    env = {**os.environ, "PYTHON": sys.executable, "SEGDEPLOY_CMAKE_ARGS": "-DSEGDEPLOY_WITH_TENSORRT=OFF"}
    _run(["bash", str(ROOT / "cpp" / "build.sh")], env=env)
    program = ROOT / "cpp" / "build" / "segdeploy_infer"
    threads = str(args.threads)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundle = _bundle(args.model, args.size, work)
        _video(work / "frames.mkv", args.frames, args.size)
        inputs = _frame_inputs(bundle, work / "frames.mkv")
        for _ in range(args.rounds):
            bench_json = work / "bench.json"
            _run([sys.executable, "-m", "segdeploy", "bench", str(bundle / "model.onnx"), "--engine", "ort",
                  "--shape", f"1x3x{args.size}x{args.size}", "--threads", threads, "--iters", str(args.frames),
                  "--warmup", "5", "--report", str(bench_json)])  # fmt: skip
            (record,) = json.loads(bench_json.read_text())["records"]
            sequential = json.loads(
                _run(
                    [
                        str(program),
                        str(bundle),
                        str(work / "frames.mkv"),
                        "--json",
                        "--no-pipeline",
                        "--threads",
                        threads,
                    ]
                ).stdout  # fmt: skip
            )
            pipelined = json.loads(
                _run([str(program), str(bundle), str(work / "frames.mkv"), "--json", "--threads", threads]).stdout
            )
            rounds.append({
                "bench_model_only_p50_ms": record["latency_ms"]["p50"],
                "python_ort_on_frames_p50_ms": _python_on_frames(bundle, inputs, args.threads),
                "cpp_sequential_end_to_end_p50_ms": sequential["total_ms"]["p50"],
                "cpp_sequential_model_p50_ms": sequential["model_ms"]["p50"],
                "cpp_pipelined_ms_per_frame": 1000.0 / pipelined["fps"],
                "cpp_pipelined_end_to_end_p50_ms": pipelined["total_ms"]["p50"],
            })  # fmt: skip
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    result = {
        "model": f"{args.model} (small test configuration), float32 NCHW logits",
        "shape": f"1x3x{args.size}x{args.size}",
        "frames": args.frames,
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs while measured",
        "rounds": rounds,
        "median": median,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpp_vs_ort.json").write_text(json.dumps(result, indent=2) + "\n")
    rows = [
        ("`segdeploy bench --engine ort`, model only (p50)", median["bench_model_only_p50_ms"]),
        ("ONNX Runtime in Python on the video's frames, model only (p50)", median["python_ort_on_frames_p50_ms"]),
        ("C++ end to end, one frame at a time (p50)", median["cpp_sequential_end_to_end_p50_ms"]),
        ("C++ ONNX Runtime share of that (p50)", median["cpp_sequential_model_p50_ms"]),
        ("C++ end to end, pipelined: time per frame (1 / FPS)", median["cpp_pipelined_ms_per_frame"]),
    ]
    ratio = median["cpp_pipelined_ms_per_frame"] / median["bench_model_only_p50_ms"]
    seq_ratio = median["cpp_sequential_end_to_end_p50_ms"] / median["bench_model_only_p50_ms"]
    frames_ratio = median["cpp_pipelined_ms_per_frame"] / median["python_ort_on_frames_p50_ms"]
    lines = [
        f"# C++ runtime vs `segdeploy bench --engine ort` ({result['model']}, {result['shape']})",
        "",
        f"{args.frames} frames of a lossless 512x512 video, {args.threads} ONNX Runtime thread(s), median of "
        f"{args.rounds} interleaved rounds; {result['machine']}: compare the ratios, not the absolute times.",
        "Written by `python benchmarks/cpp_vs_ort.py`.",
        "",
        "| measurement | ms per frame |",
        "| --- | --- |",
        *(f"| {name} | {value:.2f} |" for name, value in rows),
        "",
        f"Pipelined C++ end to end / model-only: {ratio:.3f}; one frame at a time: {seq_ratio:.3f}. "
        f"Pipelined C++ end to end / the model alone in Python on the same frames: {frames_ratio:.3f}.",
        "",
    ]
    (args.out / "cpp_vs_ort.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
