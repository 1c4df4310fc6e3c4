"""segdeploy_infer on streams: videos, directories, batches, the pixel limit, the manifest's pipeline, overlays,
the end summary, and the steady-state allocation count of the library (heavy tier: builds the C++ program).

Every mask is compared with segdeploy's Python frame pipeline (FramePipeline + ONNX Runtime) on the same decoded
frames: the C++ program and Python both use OpenCV's bilinear and nearest resizes, which are bit-exact between
the OpenCV builds here, and the same ONNX Runtime library, so the masks must be equal, not close.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cpp_support import (
    CPP,
    assert_one_error_line,
    infer,
    ort_program,
    palette_to_classes,
    pipeline_of,
    python_masks,
    run,
)
from torch import nn

from segdeploy.bundle import write_bundle
from segdeploy.data import make_shapes
from segdeploy.pipeline import IOFormat, export_onnx

pytestmark = pytest.mark.slow  # builds the C++ program

FRAME = (45, 67)  # height, width: odd, not a multiple of 8


class Net(nn.Module):
    """Conv, pool, dilated conv, upsample: class maps with structure from fixed random weights."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, classes, 3, padding=2, dilation=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b(F.max_pool2d(F.relu(self.a(x)), 2))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MultipleOf8(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.pixel_shuffle(F.pixel_unshuffle(x, 8), 8))


@pytest.fixture(scope="module")
def program() -> Path:
    return ort_program()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """u8: uint8 NHWC RGB, fused normalization and argmax, sides multiples of 8 (frames are resized);
    f32: float32 NCHW BGR normalized by the caller, logits, any size."""
    root = tmp_path_factory.mktemp("stream_bundles")
    specs = {
        "u8": (MultipleOf8(Net()), IOFormat(input_format="uint8-nhwc", output_kind="classmap")),
        "f32": (
            Net(),
            IOFormat(input_format="float32-nchw", color="bgr", mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), output_kind="logits"),
        ),
    }  # fmt: skip
    out = {}
    for name, (module, io) in specs.items():
        onnx_path = root / f"{name}.onnx"
        export_onnx(module.eval(), onnx_path, input_shape=(2, 3, 32, 48), opset=17, io=io)
        out[name] = write_bundle(onnx_path, root / name, name=name)
    return out


def _frames(count: int, size: tuple[int, int] = FRAME, seed: int = 0) -> list[np.ndarray]:
    """Different BGR frames of shapes on noise."""
    images, _ = make_shapes(count, size=size, seed=seed)
    pixels = np.clip(images * 0.25 + 0.5, 0, 1) * 255
    return [np.ascontiguousarray(np.rint(p).astype(np.uint8).transpose(1, 2, 0)[..., ::-1]) for p in pixels]


def _write_video(path: Path, frames: list[np.ndarray], fourcc: str = "FFV1") -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, frames[0].shape[1::-1])
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def _read_video(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def _raw_masks(directory: Path) -> dict[str, np.ndarray]:
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.int64) for p in sorted(directory.glob("*.png"))}


def _image_dir(root: Path, frames: list[np.ndarray]) -> Path:
    root.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(root / f"img{i}.png"), frame)
    return root


# --------------------------------------------------------------------------- video, directories, batches
@pytest.mark.parametrize("name", ["u8", "f32"])
def test_video_in_video_out_keeps_every_frame_and_every_mask_equals_python(program, bundles, tmp_path, name):
    _write_video(tmp_path / "in.mkv", _frames(6))
    decoded = _read_video(tmp_path / "in.mkv")  # the frames as a decoder gives them, for the Python side
    assert len(decoded) == 6
    proc = infer(program, bundles[name], tmp_path / "in.mkv", "-o", tmp_path / "out.mkv", "--raw", f"{tmp_path}/raw/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("6 frames in "), proc.stdout
    expected = python_masks(bundles[name], decoded)
    assert len({m.tobytes() for m in expected}) == 6 and all(len(np.unique(m)) > 1 for m in expected)
    palette = json.loads((bundles[name] / "segdeploy.json").read_text())["palette"]
    out = _read_video(tmp_path / "out.mkv")  # FFV1: lossless
    assert len(out) == 6
    raw = _raw_masks(tmp_path / "raw")
    assert list(raw) == [f"frame_{i:06d}" for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(palette_to_classes(out[i], palette), expected[i])
        np.testing.assert_array_equal(raw[f"frame_{i:06d}"], expected[i])


def test_batch_of_four_different_frames_gives_four_masks_each_equal_to_the_single_frame_run(program, bundles, tmp_path):
    frames = _frames(4, seed=5)
    images = _image_dir(tmp_path / "in", frames)
    for batch in (1, 4):
        proc = infer(program, bundles["u8"], images, "--raw", f"{tmp_path}/b{batch}/", "--batch", batch, "--json")
        assert proc.returncode == 0, proc.stderr
        summary = json.loads(proc.stdout)
        assert summary["frames"] == 4 and summary["batch"] == batch
    single, batched = _raw_masks(tmp_path / "b1"), _raw_masks(tmp_path / "b4")
    assert list(batched) == [f"img{i}" for i in range(4)]
    assert len({m.tobytes() for m in batched.values()}) == 4  # four different masks, not one repeated
    expected = python_masks(bundles["u8"], frames)
    for i in range(4):
        np.testing.assert_array_equal(batched[f"img{i}"], single[f"img{i}"])
        np.testing.assert_array_equal(batched[f"img{i}"], expected[i])


def test_pipelined_and_sequential_runs_give_the_same_masks(program, bundles, tmp_path):
    images = _image_dir(tmp_path / "in", _frames(5, seed=7))
    for flag in ("pipe", "seq"):
        extra = [] if flag == "pipe" else ["--no-pipeline"]
        proc = infer(program, bundles["f32"], images, "--raw", f"{tmp_path}/{flag}/", *extra)
        assert proc.returncode == 0, proc.stderr
    pipe, seq = _raw_masks(tmp_path / "pipe"), _raw_masks(tmp_path / "seq")
    assert list(pipe) == list(seq) and all(np.array_equal(pipe[k], seq[k]) for k in pipe)


def test_frames_of_different_sizes_in_a_directory_each_come_back_at_their_size(program, bundles, tmp_path):
    frames = [*_frames(2, size=(45, 67)), *_frames(2, size=(70, 40), seed=2)]
    images = _image_dir(tmp_path / "in", frames)
    proc = infer(program, bundles["u8"], images, "--raw", f"{tmp_path}/raw/", "--batch", 3)
    assert proc.returncode == 0, proc.stderr
    raw = _raw_masks(tmp_path / "raw")
    for i, expected in enumerate(python_masks(bundles["u8"], frames)):
        np.testing.assert_array_equal(raw[f"img{i}"], expected)
    proc = infer(program, bundles["u8"], images, "-o", tmp_path / "out.mkv")
    assert_one_error_line(proc, 2, "a video needs frames of one size")
    assert not (tmp_path / "out.mkv").exists()


def test_overlay_blends_the_palette_over_the_frame(program, bundles, tmp_path):
    frame = _frames(1)[0]
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    args = (bundles["u8"], tmp_path / "f.png")
    assert infer(program, *args, "-o", tmp_path / "color.png").returncode == 0
    proc = infer(program, *args, "-o", tmp_path / "over.png", "--overlay", "0.4")
    assert proc.returncode == 0, proc.stderr
    color = cv2.imread(str(tmp_path / "color.png")).astype(np.float64)
    over = cv2.imread(str(tmp_path / "over.png")).astype(np.float64)
    assert np.abs(over - (0.4 * color + 0.6 * frame)).max() <= 1.0
    assert_one_error_line(infer(program, *args, "-o", tmp_path / "x.png", "--overlay", "1.5"), 2, "--overlay")


def test_summary_reports_frames_fps_and_latency_percentiles(program, bundles, tmp_path):
    _write_video(tmp_path / "in.mkv", _frames(8))
    proc = infer(program, bundles["u8"], tmp_path / "in.mkv", "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["frames"] == 8 and s["fps"] > 0 and s["backend"].startswith("onnxruntime")
    for key in ("model_ms", "total_ms"):
        assert 0 < s[key]["p50"] <= s[key]["p90"] <= s[key]["p99"]
    assert s["total_ms"]["p50"] >= s["model_ms"]["p50"]
    text = infer(program, bundles["u8"], tmp_path / "in.mkv", "--max-frames", 3).stdout
    assert text.startswith("3 frames in ") and "model ms p50" in text and "end-to-end ms p50" in text


# --------------------------------------------------------------------------- limits
def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header declares width x height (the pixel data is a stub: the size check must come first)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)))


def test_oversized_frame_is_refused_with_exit_2_before_anything_runs(program, bundles, tmp_path):
    _png_header_only(tmp_path / "huge.png", 8000, 8000)
    started = time.monotonic()
    proc = infer(program, bundles["u8"], tmp_path / "huge.png", "-o", tmp_path / "m.png")
    assert time.monotonic() - started < 5
    assert_one_error_line(proc, 2, "8000x8000", "64000000 pixels", "33177600")
    assert not (tmp_path / "m.png").exists()
    # 7680x4320 itself is allowed: the refusal above is the limit, not the header stub
    _png_header_only(tmp_path / "8k.png", 7680, 4320)
    assert "pixels" not in infer(program, bundles["u8"], tmp_path / "8k.png").stderr


def test_max_pixels_bounds_images_of_every_format_and_videos(program, bundles, tmp_path):
    frame = _frames(1, size=(46, 66))[0]  # 3036 pixels; even sides, as video codecs keep them
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    cv2.imwrite(str(tmp_path / "f.tiff"), frame)  # no header reader here: OpenCV's own bound refuses it
    _write_video(tmp_path / "v.mkv", [frame, frame])
    for source in ("f.png", "f.tiff", "v.mkv"):
        raw = f"{tmp_path}/raw_{source}/"
        proc = infer(program, bundles["u8"], tmp_path / source, "--raw", raw, "--max-pixels", 3000)
        assert proc.returncode == 2, (source, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert not list((tmp_path / f"raw_{source}").glob("*.png"))
        ok = infer(program, bundles["u8"], tmp_path / source, "--max-pixels", 3036)
        assert ok.returncode == 0, (source, ok.stderr)


def test_inputs_that_cannot_be_opened_are_one_line_and_exit_2(program, bundles, tmp_path):
    assert_one_error_line(infer(program, bundles["u8"], tmp_path / "none.mp4"), 2, "no such image, directory or video")
    (tmp_path / "junk.mp4").write_bytes(b"not a video" * 100)
    assert_one_error_line(infer(program, bundles["u8"], tmp_path / "junk.mp4"), 2, "cannot open this as a video")
    assert_one_error_line(infer(program, bundles["u8"], "57"), 2, "cannot open this as a camera")
    (tmp_path / "empty").mkdir()
    assert_one_error_line(infer(program, bundles["u8"], tmp_path / "empty"), 2, "no images")
    images = _image_dir(tmp_path / "in", _frames(2))
    assert_one_error_line(infer(program, bundles["u8"], images, "-o", tmp_path / "m.png"), 2, "one PNG takes one image")


# --------------------------------------------------------------------------- the manifest's pipeline
def _with_pipeline(bundle: Path, target: Path, pipeline: dict, schema: int = 2) -> Path:
    copy = Path(shutil.copytree(bundle, target))
    manifest = json.loads((copy / "segdeploy.json").read_text())
    manifest["schema_version"] = schema
    manifest["pipeline"] = pipeline
    (copy / "segdeploy.json").write_text(json.dumps(manifest))
    return copy


@pytest.mark.parametrize("name", ["u8", "f32"])
def test_schema_2_pipeline_gives_the_masks_of_the_v1_fields(program, bundles, tmp_path, name):
    frame = _frames(1, seed=11)[0]
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    v2 = _with_pipeline(bundles[name], tmp_path / "v2", pipeline_of(bundles[name]).to_dict())
    for bundle, raw in ((bundles[name], "v1.png"), (v2, "v2.png")):
        proc = infer(program, bundle, tmp_path / "f.png", "--raw", tmp_path / raw)
        assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "v1.png"), -1), cv2.imread(str(tmp_path / "v2.png"), -1))


def test_pipeline_max_size_bounds_the_run_size(program, bundles, tmp_path):
    pipeline = dataclasses.replace(pipeline_of(bundles["u8"]), max_size=32)
    bundle = _with_pipeline(bundles["u8"], tmp_path / "b", pipeline.to_dict())
    frame = _frames(1, size=(90, 130))[0]
    cv2.imwrite(str(tmp_path / "f.png"), frame)
    proc = infer(program, bundle, tmp_path / "f.png", "--raw", tmp_path / "raw.png")
    assert proc.returncode == 0, proc.stderr
    assert "model ran at 32x32" in proc.stdout  # 130x90 would run at 128x88 without the bound
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "raw.png"), -1), python_masks(bundle, [frame], pipeline)[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p["tensor"].update(dtype="float32"), "disagrees with 'input'/'output'"),
        (lambda p: p["resize"].update(policy="letterbox"), "pipeline.resize.policy"),
        (lambda p: p["normalize"].update(scale=1.0), "1/255"),
        (lambda p: p.pop("output"), "pipeline.output"),
    ],
)
def test_a_pipeline_this_runtime_cannot_follow_is_refused(program, bundles, tmp_path, change, message):
    pipeline = pipeline_of(bundles["u8"]).to_dict()
    change(pipeline)
    bundle = _with_pipeline(bundles["u8"], tmp_path / "b", pipeline)
    assert_one_error_line(infer(program, bundle, "--check-golden"), 2, message)


# --------------------------------------------------------------------------- steady-state allocations
@pytest.mark.parametrize(("size", "batch"), [((48, 64), 1), (FRAME, 1), ((48, 64), 4)])
def test_segdeploy_code_allocates_nothing_once_warm(program, bundles, size, batch):
    """Counted by a replaced malloc over 20 frames after 3 warm-up frames: segdeploy's own code (preprocessing,
    class maps, buffers) allocates nothing. ONNX Runtime's run allocates inside its own call, and OpenCV's resize a
    row buffer when the frame is resized (FRAME runs at 48x64): reported, not segdeploy's to avoid."""
    tester = CPP / "build" / "segdeploy_alloc_test"
    h, w = size
    proc = run(tester, bundles["u8"], "--width", w, "--height", h, "--batch", batch, "--frames", 20)
    assert proc.returncode == 0, proc.stderr
    counts = json.loads(proc.stdout)
    assert counts["segdeploy"] == 0, counts
    assert counts["other_threads"] == 0, counts
    assert counts["runtime"] > 0  # the counter sees the runtime's allocations: it would see ours too
    assert (counts["opencv"] > 0) == (size == FRAME), counts
