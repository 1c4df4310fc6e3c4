"""``segdeploy eval`` and ``segdeploy predict`` end to end, on briefly trained tiny models.

The labeled set's masks are the PyTorch model's own predictions, computed here without segdeploy's
frame pipeline (images at sizes the model takes, ImageNet normalization by hand), so ``pytorch`` and the
FP32 file must score mIoU 1.0 exactly and an INT8 file what ONNX Runtime and the per-class formula say.
A second model takes only multiples of 4, raw BGR uint8 frames and outputs a class map: its odd-sized
frames go through the resize and back. Ray tests start a local cluster (heavy tier).
"""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from test_metrics import reference_scores
from typer.testing import CliRunner

from segdeploy.artifact import read_metadata
from segdeploy.bundle import write_bundle
from segdeploy.bundle.layout import palette
from segdeploy.bundle.manifest import BundleManifest
from segdeploy.cli import app
from segdeploy.data import make_shapes, train_tiny
from segdeploy.frames import FramePipeline
from segdeploy.models.loading import load_model
from segdeploy.pipeline import Calibration, IOFormat, ModelSpec, export_onnx
from segdeploy.runtime import open_runner

runner = CliRunner()
NUM_CLASSES = 4
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
SIZES = [(32, 32), (37, 45), (48, 40), (29, 33), (40, 56), (33, 27)]
RESULT_KEYS = {"candidate", "miou", "pixel_accuracy", "per_class_iou", "images"}

MODELS = textwrap.dedent(
    '''
    import torch
    import torch.nn.functional as F
    from torch import nn

    def block(a, b, stride=1):
        return nn.Sequential(nn.Conv2d(a, b, 3, stride=stride, padding=1), nn.BatchNorm2d(b), nn.ReLU())

    class Tiny(nn.Module):
        """Any size: a full-resolution branch and a stride-2 branch resized back."""

        def __init__(self, num_classes=4, in_channels=3):
            super().__init__()
            self.full = block(in_channels, 12)
            self.coarse = block(12, 12, 2)
            self.head = nn.Conv2d(24, num_classes, 1)

        def forward(self, x):
            a = self.full(x)
            b = F.interpolate(self.coarse(a), size=x.shape[-2:], mode="bilinear", align_corners=False)
            return self.head(torch.cat([a, b], 1))

    class Strict(nn.Module):
        """Multiples of 4 only: two poolings whose transposed-conv upsamplings must meet the skips."""

        def __init__(self, num_classes=4, in_channels=3):
            super().__init__()
            self.a, self.b, self.c = block(in_channels, 8), block(8, 12), block(12, 16)
            self.up2 = nn.ConvTranspose2d(16, 12, 2, 2)
            self.up1 = nn.ConvTranspose2d(12, 8, 2, 2)
            self.head = nn.Conv2d(16, num_classes, 1)

        def forward(self, x):
            a = self.a(x)
            b = self.b(F.max_pool2d(a, 2))
            b = b + self.up2(self.c(F.max_pool2d(b, 2)))
            return self.head(torch.cat([a, self.up1(b)], 1))

    def tiny(num_classes=4, in_channels=3):
        return Tiny(num_classes, in_channels)

    def strict(num_classes=4, in_channels=3):
        return Strict(num_classes, in_channels)
    '''
)


def _train(spec: str, path: Path) -> Path:
    torch.manual_seed(0)
    model = load_model(spec, num_classes=NUM_CLASSES).module
    images, labels = make_shapes(48, size=(32, 32), num_classes=NUM_CLASSES, seed=1)
    train_tiny(model, images, labels, steps=300, seconds=6)
    torch.save(model.state_dict(), path)
    return path


def _rgb(seed: int, size: tuple[int, int]) -> np.ndarray:
    images, _ = make_shapes(1, size=size, num_classes=NUM_CLASSES, seed=seed)
    return np.clip((images[0] * 0.25 + 0.5) * 255, 0, 255).round().astype(np.uint8).transpose(1, 2, 0)


def _normalized(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(((rgb.astype(np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1)[None])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two trained models, their files (FP32, INT8, uint8-BGR class map, a bundle) and a set labeled by PyTorch."""
    root = tmp_path_factory.mktemp("data")
    (root / "models.py").write_text(MODELS)
    tiny, strict = f"{root / 'models.py'}:tiny", f"{root / 'models.py'}:strict"
    tiny_pt, strict_pt = _train(tiny, root / "tiny.pt"), _train(strict, root / "strict.pt")
    images, masks = root / "images", root / "masks"
    images.mkdir()
    masks.mkdir()
    module = load_model(tiny, num_classes=NUM_CLASSES, weights=tiny_pt).module.eval()
    for i, size in enumerate(SIZES):
        rgb = _rgb(100 + i, size)
        cv2.imwrite(str(images / f"im{i}.png"), rgb[:, :, ::-1])
        with torch.no_grad():
            prediction = module(torch.from_numpy(_normalized(rgb))).argmax(1)[0].numpy()
        cv2.imwrite(str(masks / f"im{i}.png"), prediction.astype(np.uint8))
    camvid = root / "camvid"  # the same set in CamVid's layout: calibrate on "train", score "val"
    for split in ("train", "val"):
        shutil.copytree(images, camvid / split)
        shutil.copytree(masks, camvid / f"{split}annot")
    shape = (1, 3, 32, 32)
    tiny_spec = ModelSpec(num_classes=NUM_CLASSES, weights=tiny_pt)
    fp32 = export_onnx(tiny, root / "tiny.onnx", input_shape=shape, spec=tiny_spec).path
    int8 = export_onnx(
        tiny, root / "tiny.int8.onnx", input_shape=shape, spec=tiny_spec,
        precision="int8", calibration=Calibration(f"camvid:{camvid}:train"), verify=False,
    ).path  # fmt: skip
    fp16 = export_onnx(
        tiny, root / "tiny.fp16.onnx", input_shape=shape, spec=tiny_spec, precision="fp16", verify=False,
    ).path  # fmt: skip
    frames = export_onnx(
        strict, root / "strict.onnx", input_shape=shape, spec=ModelSpec(num_classes=NUM_CLASSES, weights=strict_pt),
        io=IOFormat(input_format="uint8-nhwc", color="bgr", output_kind="classmap"),
    )  # fmt: skip
    assert frames.metadata.size_multiple == 4
    bundle = write_bundle(frames.path, root / "strict_bundle")
    return {
        "root": root, "tiny_pt": tiny_pt, "fp32": fp32, "int8": int8, "fp16": fp16, "strict": frames.path,
        "bundle": bundle, "images": images, "masks": masks, "camvid": camvid,
    }  # fmt: skip


def _eval_json(*args: str) -> dict:
    result = runner.invoke(app, ["eval", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _pairs(world: dict, masks: Path | None = None) -> list[str]:
    return ["--images", str(world["images"]), "--masks", str(masks or world["masks"])]


def _truths(masks: Path) -> list[np.ndarray]:
    return [cv2.imread(str(masks / f"im{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(len(SIZES))]


def _ort_predictions(world: dict, name: str = "int8") -> list[np.ndarray]:
    """ONNX Runtime on one of the files, fed by hand: the images are at sizes the model takes."""
    session = ort.InferenceSession(str(world[name]), providers=["CPUExecutionProvider"])
    out = []
    for i in range(len(SIZES)):
        rgb = cv2.imread(str(world["images"] / f"im{i}.png"))[:, :, ::-1]
        out.append(session.run(None, {"input": _normalized(rgb)})[0].argmax(1)[0])
    return out


# --------------------------------------------------------------------------- eval
def test_pytorch_and_the_fp32_file_score_miou_1_on_masks_pytorch_drew(world):
    report = _eval_json(str(world["fp32"]), "pytorch", *_pairs(world), "--weights", str(world["tiny_pt"]))
    assert [r["candidate"] for r in report["results"]] == [str(world["fp32"]), "pytorch"]
    for result in report["results"]:
        assert set(result) == RESULT_KEYS
        assert result["miou"] == 1.0 and result["pixel_accuracy"] == 1.0 and result["images"] == len(SIZES)
        assert all(v == 1.0 for v in result["per_class_iou"] if v is not None)
    assert report["changes"][1] == {"candidate": "pytorch", "miou": 0.0, "pixel_accuracy": 0.0, "agreement": 1.0}


def test_pytorch_without_weights_is_rebuilt_from_the_checkpoint_the_file_records(world):
    report = _eval_json(str(world["fp32"]), "pytorch", *_pairs(world))
    assert report["results"][1]["miou"] == 1.0


def test_an_int8_file_scores_what_onnx_runtime_and_the_per_class_formula_say(world):
    report = _eval_json(str(world["fp32"]), str(world["int8"]), str(world["fp16"]), *_pairs(world))
    ious, miou, accuracy = reference_scores(_ort_predictions(world), _truths(world["masks"]), NUM_CLASSES, 255)
    int8, fp16 = report["results"][1:]
    assert int8["per_class_iou"] == pytest.approx(ious, abs=1e-12)
    assert int8["miou"] == pytest.approx(miou, abs=1e-12) and int8["pixel_accuracy"] == pytest.approx(
        accuracy, abs=1e-12
    )
    assert int8["miou"] < 1.0  # INT8 moves some pixels: the comparison is not between two perfect scores
    assert report["changes"][1]["miou"] == pytest.approx(miou - 1.0, abs=1e-12)
    assert report["candidates"][1]["precision"] == "int8"
    # FP16 (float32 I/O) the same way: what its own ONNX Runtime predictions score
    _, fp16_miou, _ = reference_scores(_ort_predictions(world, "fp16"), _truths(world["masks"]), NUM_CLASSES, 255)
    assert report["candidates"][2]["precision"] == "fp16" and fp16["miou"] == pytest.approx(fp16_miou, abs=1e-12)
    assert report["changes"][2]["agreement"] > 0.99


def test_ignored_pixels_change_nothing(world, tmp_path):
    corrupted, ignored = tmp_path / "corrupted", tmp_path / "ignored"
    corrupted.mkdir()
    ignored.mkdir()
    truths = _truths(world["masks"])
    for i, truth in enumerate(truths):
        wrong = truth.copy()
        wrong[4:20, 5:17] = (truth[4:20, 5:17] + 1) % NUM_CLASSES
        cv2.imwrite(str(corrupted / f"im{i}.png"), wrong)
        wrong[4:20, 5:17] = 255
        cv2.imwrite(str(ignored / f"im{i}.png"), wrong)
    candidates = [str(world["fp32"]), str(world["int8"])]
    assert _eval_json(*candidates, *_pairs(world, corrupted))["results"][0]["miou"] < 0.9
    results = _eval_json(*candidates, *_pairs(world, ignored))["results"]
    assert results[0]["miou"] == 1.0 and results[0]["pixel_accuracy"] == 1.0
    marked = [cv2.imread(str(ignored / f"im{i}.png"), cv2.IMREAD_UNCHANGED) for i in range(len(SIZES))]
    ious, miou, _ = reference_scores(_ort_predictions(world), marked, NUM_CLASSES, 255)
    assert results[1]["miou"] == pytest.approx(miou, abs=1e-12)
    # another ignore index: 255 is then a class value outside the model's classes, refused in one line
    refused = runner.invoke(app, ["eval", *candidates, *_pairs(world, ignored), "--ignore-index", "0"])
    assert refused.exit_code == 2 and "holds class 255" in refused.output


def test_a_layout_named_by_options_or_by_a_specification_scores_as_the_stem_matched_directories(world):
    candidates = [str(world["fp32"]), str(world["int8"])]
    pairs = _eval_json(*candidates, *_pairs(world))["results"]
    camvid = world["camvid"]
    assert _eval_json(*candidates, "--camvid", str(camvid), "--split", "val")["results"] == pairs
    assert _eval_json(*candidates, "--data", f"camvid:{camvid}:val")["results"] == pairs


def test_the_reports_hold_the_json_contract_and_markdown_tables(world, tmp_path):
    paths = [tmp_path / "eval.json", tmp_path / "eval.md"]
    args = [
        str(world["fp32"]),
        str(world["int8"]),
        *_pairs(world),
        "--report",
        str(paths[0]),
        "--report",
        str(paths[1]),
    ]
    stdout = _eval_json(*args)
    written = json.loads(paths[0].read_text())
    assert written == stdout
    for result in written["results"]:
        assert set(result) == RESULT_KEYS
        assert isinstance(result["candidate"], str) and isinstance(result["images"], int)
        assert isinstance(result["miou"], float) and isinstance(result["pixel_accuracy"], float)
        assert len(result["per_class_iou"]) == NUM_CLASSES
        assert all(v is None or isinstance(v, float) for v in result["per_class_iou"])
    text = paths[1].read_text()
    assert "| candidate | runtime | precision | mIoU % |" in text and "## IoU per class (%)" in text
    assert f"| {world['int8']} | ort | int8 |" in text


def test_the_worst_images_are_saved_as_disagreement_panels_and_the_plot_drawn(world, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["eval", str(world["fp32"]), str(world["int8"]), *_pairs(world), "-o", str(out), "--worst", "2",
         "--plot", str(tmp_path / "iou.png")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    panels = sorted((out / "worst").rglob("*.png"))
    assert [p.parent.name for p in panels] == ["0_tiny.onnx"] * 2 + ["1_tiny.int8.onnx"] * 2
    stem = panels[2].stem.split("_", 1)[1]
    h, w = cv2.imread(str(world["images"] / f"{stem}.png")).shape[:2]
    panel = cv2.imread(str(panels[2]))
    assert panel.shape == (h, 4 * w, 3)
    assert (tmp_path / "iou.png").stat().st_size > 0


def test_eval_refuses_what_it_cannot_score_in_one_line(world, tmp_path):
    cases = [
        (["pytorch", *_pairs(world)], "name an ONNX file, plan or bundle too"),
        ([str(world["fp32"])], "name one labeled set"),
        ([str(world["fp32"]), "--images", str(world["images"])], "go together"),
        ([str(world["fp32"]), *_pairs(world), "--voc", str(tmp_path)], "got --images/--masks, --voc"),
        ([str(world["fp32"]), "--voc", str(tmp_path)], "not a VOC root"),
        ([str(world["fp32"]), *_pairs(world, world["images"])], "color image"),
        ([str(world["fp32"]), *_pairs(world), "--report", str(tmp_path / "r.txt")], ".json or .md"),
        ([str(tmp_path / "missing.onnx"), *_pairs(world)], "does not exist"),
    ]
    for args, message in cases:
        result = runner.invoke(app, ["eval", *args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output


# --------------------------------------------------------------------------- predict
def _runner_classmap(model: Path, frame: np.ndarray) -> np.ndarray:
    """The runner's class map of one BGR frame at the frame's size, through the file's own pipeline."""
    pipeline = FramePipeline.from_metadata(read_metadata(model))
    with open_runner(model) as model_runner:
        output = model_runner.infer(pipeline.to_input([frame], frame_color="bgr"))
    return pipeline.restore(pipeline.to_classmap(output)[0], frame.shape[:2])


def _indices(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.asarray(image)


@pytest.mark.parametrize("model", ["fp32", "strict", "bundle"])
def test_predict_pngs_are_the_runners_class_maps(world, tmp_path, model):
    target = world[model]
    result = runner.invoke(app, ["predict", str(target), str(world["images"]), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    onnx_file = target / "model.onnx" if model == "bundle" else target
    for i, size in enumerate(SIZES):
        frame = cv2.imread(str(world["images"] / f"im{i}.png"))
        written = _indices(tmp_path / "out" / f"im{i}.png")
        assert written.shape == size
        assert np.array_equal(written, _runner_classmap(onnx_file, frame))
        overlay = cv2.imread(str(tmp_path / "out" / f"im{i}_overlay.jpg"))
        assert overlay.shape == (*size, 3)


def test_predict_colors_come_from_the_bundle_or_a_palette_file_and_overlays_can_be_left_out(world, tmp_path):
    manifest = BundleManifest.read(world["bundle"])
    result = runner.invoke(
        app, ["predict", str(world["bundle"]), str(world["images"] / "im1.png"), "-o", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "im1.png") as image:
        assert image.getpalette()[: 3 * NUM_CLASSES] == [v for c in manifest.palette[:NUM_CLASSES] for v in c]
    colors = tmp_path / "colors.csv"
    colors.write_text("name,r,g,b\nbg,1,2,3\na,10,20,30\nb,40,50,60\nc,70,80,90\n")
    out = tmp_path / "plain"
    args = ["predict", str(world["fp32"]), str(world["images"] / "im1.png"), "-o", str(out), "--no-overlay"]
    result = runner.invoke(app, [*args, "--palette", str(colors)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["im1.png"]
    with Image.open(out / "im1.png") as image:
        assert image.getpalette()[:12] == [1, 2, 3, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert palette(NUM_CLASSES)[1] == (128, 0, 0)  # the default is VOC's color map


def test_a_video_gives_an_overlay_video_and_a_class_map_per_frame(world, tmp_path):
    video = tmp_path / "clip.mp4"
    frame = cv2.imread(str(world["images"] / "im4.png"))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (frame.shape[1], frame.shape[0]))
    for shift in range(4):
        writer.write(np.roll(frame, 5 * shift, axis=1))
    writer.release()
    decoded = []
    capture = cv2.VideoCapture(str(video))
    while (read := capture.read())[0]:
        decoded.append(read[1])
    assert len(decoded) == 4
    result = runner.invoke(app, ["predict", str(world["strict"]), str(video), "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    maps = sorted((tmp_path / "out" / "clip").iterdir())
    assert [p.name for p in maps] == [f"{i:06d}.png" for i in range(4)]
    for path, decoded_frame in zip(maps, decoded):
        assert np.array_equal(_indices(path), _runner_classmap(world["strict"], decoded_frame))
    capture = cv2.VideoCapture(str(tmp_path / "out" / "clip_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    assert (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (56, 40)


def test_predict_takes_globs_and_refuses_bad_inputs_in_one_line(world, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(world["fp32"]), str(world["images"] / "im[12].png"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["im1.png", "im1_overlay.jpg", "im2.png", "im2_overlay.jpg"]
    twin = tmp_path / "twin"
    twin.mkdir()
    shutil.copy(world["images"] / "im1.png", twin / "im1.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    cases = [
        ([str(world["fp32"]), str(tmp_path / "none*.png")], "matches no image or video"),
        ([str(world["fp32"]), str(world["images"]), str(twin)], "share the stem 'im1'"),
        ([str(world["fp32"]), str(tmp_path / "notes.txt")], "unknown input type '.txt'"),
        ([str(world["fp32"]), str(tmp_path / "broken.png")], "cannot decode image"),
        ([str(world["fp32"]), str(world["images"]), "--alpha", "1.5"], "--alpha must be within 0..1"),
        ([str(world["fp32"]), str(world["images"]), "--engine", "trt"], "build a TensorRT engine"),
        ([str(world["bundle"]), str(world["images"]), "--engine", "trt"], "has no TensorRT plan"),
        ([str(world["images"]), str(world["images"])], "not a bundle"),
    ]
    for field, value, message in (
        ("palette", [[0, 0, 300]] * NUM_CLASSES, "segdeploy.json: 'palette' needs"),
        ("schema_version", 1, "segdeploy.json has schema_version 1"),
    ):
        broken = tmp_path / f"broken_{field}"
        shutil.copytree(world["bundle"], broken)
        manifest = json.loads((broken / "segdeploy.json").read_text())
        (broken / "segdeploy.json").write_text(json.dumps({**manifest, field: value}))
        cases.append(([str(broken), str(world["images"])], message))
    for args, message in cases:
        result = runner.invoke(app, ["predict", *args, "-o", str(tmp_path / "refused")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output, (args, result.output)


# --------------------------------------------------------------------------- Ray (heavy tier)
@pytest.mark.slow
def test_a_ray_cluster_of_two_workers_scores_and_writes_exactly_what_one_process_does(world, tmp_path):
    pytest.importorskip("ray")
    candidates = [str(world["fp32"]), str(world["int8"]), "pytorch", "--weights", str(world["tiny_pt"])]
    local = _eval_json(*candidates, *_pairs(world))
    distributed = _eval_json(*candidates, *_pairs(world), "--ray", "--ray-workers", "2")
    assert distributed == local
    video = tmp_path / "clip.mp4"
    frame = cv2.imread(str(world["images"] / "im4.png"))
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10, (frame.shape[1], frame.shape[0]))
    for shift in range(3):
        writer.write(np.roll(frame, 7 * shift, axis=0))
    writer.release()
    outputs = {}
    for name, extra in (("local", []), ("ray", ["--ray", "--ray-workers", "2"])):
        args = ["predict", str(world["strict"]), str(world["images"]), str(video), "-o", str(tmp_path / name)]
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = {
            p.relative_to(tmp_path / name).as_posix(): _video_frames(p) if p.suffix == ".mp4" else p.read_bytes()
            for p in sorted((tmp_path / name).rglob("*"))
            if p.is_file()
        }
    assert outputs["ray"].keys() == outputs["local"].keys() and len(outputs["local"]) == 2 * len(SIZES) + 3 + 1
    for key, value in outputs["local"].items():
        assert np.array_equal(outputs["ray"][key], value) if key.endswith(".mp4") else outputs["ray"][key] == value


def _video_frames(path: Path) -> np.ndarray:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    return np.stack(frames)


# --------------------------------------------------------------------------- candidates
def _fake_plan(onnx_path: Path, directory: Path) -> Path:
    """Plan bytes and the sidecar `segdeploy build` writes beside them (made with its own functions)."""
    import onnx

    from segdeploy.fileio import sha256_file
    from segdeploy.runtime.trt_build import derive_profile, make_sidecar, plan_build

    engine = directory / "strict.engine"
    engine.write_bytes(b"\x00fake TensorRT plan bytes" * 40)
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    sidecar = make_sidecar(
        plan=plan_build(10, "fp16", None),
        profile=derive_profile(metadata, min_shape="1x32x32x3", opt_shape="1x32x32x3", max_shape="1x64x64x3"),
        input_name="input", input_format="uint8-nhwc", trt_version="10.3.0.30", gpu_name="Orin (nvgpu)",
        compute_capability="8.7", onnx_path=onnx_path, onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine), workspace_gb=1.0, timing_cache=None, build_seconds=1.0,
    )  # fmt: skip
    sidecar.write(engine)
    return engine


def test_a_plan_is_fed_as_its_onnx_or_its_bundle_describes(world, tmp_path):
    from segdeploy.artifact import Runtime
    from segdeploy.candidates import resolve_candidates
    from segdeploy.errors import UserInputError

    onnx_copy = tmp_path / "strict.onnx"
    shutil.copy(world["strict"], onnx_copy)
    plan = _fake_plan(onnx_copy, tmp_path)
    expected = FramePipeline.from_metadata(read_metadata(world["strict"]))
    (spec,) = resolve_candidates([str(plan)])
    assert (spec.runtime, spec.precision.value, spec.pipeline) == (Runtime.TRT, "fp16", expected)
    bundle = write_bundle(onnx_copy, tmp_path / "bundle", engine=plan)
    for name, runtime in ((str(bundle), "trt"), (str(bundle / "model.plan"), None)):
        (spec,) = resolve_candidates([name], runtime=runtime)
        assert spec.path == bundle / "model.plan" and spec.pipeline == expected
        facts = spec.engine_facts
        assert facts.input_format.value == "uint8-nhwc" and facts.compute_capability == "8.7"
        assert (facts.tensorrt_version, facts.precision.value, spec.precision.value) == ("10.3.0.30", "fp16", "fp16")
    onnx_copy.write_bytes(onnx_copy.read_bytes() + b"\x00")
    with pytest.raises(UserInputError, match="missing or changed since the build"):
        resolve_candidates([str(plan)])
    plan.with_name(plan.name + ".json").unlink()
    with pytest.raises(UserInputError, match="has no sidecar"):
        resolve_candidates([str(plan)])


def test_a_plan_without_tensorrt_here_is_refused_in_one_line(world, tmp_path):
    plan = _fake_plan(world["strict"], tmp_path)
    result = runner.invoke(app, ["predict", str(plan), str(world["images"] / "im0.png"), "-o", str(tmp_path / "o")])
    assert result.exit_code in (2, 5) and "Traceback" not in result.output, result.output
    assert not (tmp_path / "o" / "im0.png").exists()


def test_pytorch_beside_a_bgr_uint8_file_is_fed_normalized_rgb_like_the_files_network(world, tmp_path):
    from segdeploy.candidates import resolve_candidates

    strict, torch_spec = resolve_candidates([str(world["strict"]), "pytorch"])
    assert (strict.pipeline.color.value, strict.pipeline.dtype, strict.pipeline.layout) == ("bgr", "uint8", "NHWC")
    network = torch_spec.pipeline
    assert (network.color.value, network.dtype, network.layout, network.normalize_in_graph) == (
        "rgb",
        "float32",
        "NCHW",
        False,
    )
    assert network.mean == pytest.approx(tuple(MEAN)) and network.std == pytest.approx(tuple(STD))
    strict_pt = world["root"] / "strict.pt"
    report = _eval_json(str(world["strict"]), "pytorch", "--weights", str(strict_pt), *_pairs(world))
    # the fused graph and PyTorch differ by float noise only: a color or normalization slip moves whole regions
    assert report["changes"][1]["agreement"] > 0.999


def test_ray_without_the_extra_is_refused_before_any_work(world, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where it is not installed
    result = runner.invoke(app, ["eval", str(world["fp32"]), *_pairs(world), "--ray"])
    assert result.exit_code == 5 and "pip install 'segdeploy[ray]'" in result.output
    result = runner.invoke(app, ["eval", str(world["fp32"]), *_pairs(world), "--ray-workers", "2"])
    assert result.exit_code == 2 and "go with --ray" in result.output


@pytest.mark.slow
def test_a_ray_workers_input_error_is_the_one_line_it_raised(world, tmp_path):
    pytest.importorskip("ray")
    masks = tmp_path / "masks"
    shutil.copytree(world["masks"], masks)
    bad = cv2.imread(str(masks / "im3.png"), cv2.IMREAD_UNCHANGED)
    bad[0, 0] = 9
    cv2.imwrite(str(masks / "im3.png"), bad)
    result = runner.invoke(app, ["eval", str(world["fp32"]), *_pairs(world, masks), "--ray", "--ray-workers", "2"])
    assert result.exit_code == 2, result.output
    assert "im3.png holds class 9" in result.output and "Traceback" not in result.output
