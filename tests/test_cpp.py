"""The C++ runtime (cpp/): segdeploy_infer against Python's ONNX Runtime, on bundles made here.

The program is built once per session with ``bash cpp/build.sh`` (incremental in cpp/build; heavy tier); the tests
are skipped when its system packages are missing (build.sh names them). Streams, videos, batches and limits are in
test_cpp_streams.py, the TensorRT backend in test_cpp_tensorrt.py.

Three bundles from two briefly trained tiny nets (random weights sit on near-ties):

- ``rgb_classmap``: uint8 NHWC RGB in, normalization and argmax fused, int32 class map out; dynamic N/H/W but
  heights and widths must be multiples of 8, so a 67x45 image is resized to 64x48 and the mask resized back.
- ``bgr_logits``: float32 NCHW in BGR order, normalized by the consumer with per-channel ImageNet mean/std,
  4-class logits out; any size, so the image runs at 67x45.
- ``grey_probs``: uint8 NCHW 1-channel in, fixed shape 2x1x45x67 (the frame is repeated over the batch), 1-class
  sigmoid out (p > 0.5): bright versus dark pixels.

Each is exported by ``segdeploy.pipeline.export_onnx`` (which fuses the pre- and post-processing and records
them in the metadata) and bundled by ``segdeploy.bundle.write_bundle``: the C++ program reads real bundles.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from cpp_support import ort_program
from PIL import Image
from torch import nn

from segdeploy.bundle import write_bundle
from segdeploy.data import make_shapes, train_tiny
from segdeploy.pipeline import IOFormat, export_onnx

pytestmark = pytest.mark.slow  # builds the C++ program

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "cpp"
IMAGE_SIZE = (45, 67)  # (height, width): odd, and not a multiple of rgb_classmap's 8
TRACE_SIZE = (32, 48)  # the dynamic exports' traced size, and so their golden input's
TRAIN_MEAN, TRAIN_STD = 0.5, 0.25  # segdeploy.data's pixel normalization, what the nets were trained on
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MAX_DIFFERING = 0.001  # the bundle format's class-map rule: at most 0.1% of pixels may differ


# --------------------------------------------------------------------------- the program
@pytest.fixture(scope="session")
def infer_program() -> Path:
    """cpp/build/segdeploy_infer, built (or brought up to date) once per session."""
    return ort_program()


def _infer(program: Path, *args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(program), *map(str, args), "--threads", "1"], capture_output=True, text=True, timeout=300, check=False
    )


def _assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- trained nets and their ONNX
class TinyNet(nn.Module):
    """Conv/BN/ReLU, max pool, dilated conv, transposed conv, bilinear resize back: any input size >= 2."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()

        def block(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
            conv = nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False)
            return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())

        self.encoder = nn.Sequential(block(in_channels, width), nn.MaxPool2d(2), block(width, width, 2))
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(F.relu(self.up(self.encoder(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


class MultipleOf8(nn.Module):
    """The net, taking only heights and widths that are multiples of 8 (as encoder-decoders with skips do).

    ``pixel_unshuffle``/``pixel_shuffle`` by 8 is the identity on such sizes and fails on any other, so the
    export finds the rule and records it (``size_multiple`` 8).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.pixel_shuffle(F.pixel_unshuffle(x, 8), 8))


class BgrImagenetLogits(nn.Module):
    """float32 NCHW BGR, normalized with ImageNet statistics -> logits of the net trained on RGB."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x[:, [2, 1, 0]] * self.std + self.mean  # RGB, 0..1
        return self.net((pixels - TRAIN_MEAN) / TRAIN_STD)


class BrightLogit(nn.Module):
    """One logit of a 2-class net: class 1 minus class 0, so its sigmoid is P(bright) (> 0.5 exactly when 1 wins)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        return logits[:, 1:2] - logits[:, 0:1]


def _pixels(normalized: np.ndarray) -> np.ndarray:
    """make_shapes' normalized float images [N, C, H, W] as uint8 pixels [N, H, W, C]."""
    values = np.clip(normalized * TRAIN_STD + TRAIN_MEAN, 0.0, 1.0) * 255
    return np.rint(values).astype(np.uint8).transpose(0, 2, 3, 1)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    """name -> the exported ONNX path and the bundle's labels; also the trained RGB net."""
    directory = tmp_path_factory.mktemp("cpp_models")
    torch.manual_seed(0)
    images, labels = make_shapes(64, size=(32, 32), seed=0)
    rgb_net = TinyNet(3, 4)
    train_tiny(rgb_net, images, labels, steps=200, lr=1e-2, batch_size=8, seconds=10, seed=0)
    # The grey net sees what the program feeds it, the luma of the same images, and marks the bright pixels
    # (shapes versus background is too hard for a net this small in grey: it learnt to say "background").
    grey = _grey(_pixels(images)).transpose(0, 3, 1, 2)
    grey_net = TinyNet(1, 2)
    train_tiny(
        grey_net,
        (grey / np.float32(255) - TRAIN_MEAN) / TRAIN_STD,
        grey[:, 0] > 128,
        steps=80,
        lr=1e-2,
        batch_size=8,
        seconds=6,
        seed=0,
    )

    four_labels = ["background", "circle", "rectangle", "triangle"]
    exports = {
        # normalization with the nets' own training statistics, fused into the graph for uint8 input
        "rgb_classmap": (
            MultipleOf8(rgb_net),
            (2, 3, *TRACE_SIZE),
            four_labels,
            {
                "io": IOFormat(
                    input_format="uint8-nhwc", mean=(TRAIN_MEAN,) * 3, std=(TRAIN_STD,) * 3, output_kind="classmap"
                )
            },
        ),
        # mean/std in RGB order, as export takes them; the manifest gives them in the input's (BGR) order
        "bgr_logits": (
            BgrImagenetLogits(rgb_net),
            (2, 3, *TRACE_SIZE),
            four_labels,
            {
                "io": IOFormat(
                    input_format="float32-nchw", color="bgr", mean=IMAGENET_MEAN, std=IMAGENET_STD, output_kind="logits"
                )
            },
        ),
        "grey_probs": (
            BrightLogit(grey_net),
            (2, 1, *IMAGE_SIZE),
            ["bright"],
            {
                "io": IOFormat(input_format="uint8-nchw", mean=(TRAIN_MEAN,), std=(TRAIN_STD,), output_kind="probs"),
                "dynamic": False,
            },
        ),
    }
    specs: dict = {"rgb_net": rgb_net}
    for name, (module, shape, label_list, options) in exports.items():
        path = directory / f"{name}.onnx"
        export_onnx(module.eval(), path, input_shape=shape, opset=17, **options)
        labels_file = directory / f"{name}.labels.txt"
        labels_file.write_text("".join(f"{label}\n" for label in label_list))
        specs[name] = {"onnx": path, "labels": labels_file}
    return specs


# --------------------------------------------------------------------------- bundles
@pytest.fixture(scope="session")
def bundles(models, tmp_path_factory) -> dict[str, Path]:
    """name -> bundle directory, written by segdeploy's own bundle writer."""
    root = tmp_path_factory.mktemp("cpp_bundles")
    return {
        name: write_bundle(models[name]["onnx"], root / name, labels=models[name]["labels"], name=name)
        for name in ("rgb_classmap", "bgr_logits", "grey_probs")
    }


@pytest.fixture
def rgb_bundle_copy(bundles, tmp_path) -> Path:
    """A private copy of the rgb_classmap bundle that a test may damage."""
    return Path(shutil.copytree(bundles["rgb_classmap"], tmp_path / "bundle"))


def test_bundles_have_the_three_flavours(bundles):
    """The manifests segdeploy writes describe what each C++ test relies on."""
    manifests = {name: json.loads((path / "segdeploy.json").read_text()) for name, path in bundles.items()}
    rgb, bgr, grey = (manifests[n] for n in ("rgb_classmap", "bgr_logits", "grey_probs"))
    assert rgb["input"] | {"mean": None, "std": None} == {
        "name": "input",
        "dtype": "uint8",
        "layout": "NHWC",
        "color": "rgb",
        "mean": None,
        "std": None,
        "normalization_fused": True,
        "shape": [2, *TRACE_SIZE, 3],
        "dynamic_axes": ["batch", "height", "width"],
        # 16, not 8: the capture keeps the unshuffled sides >= 2 (torch.export specializes sizes 0 and 1),
        # and the file is only promised where the capture holds
        "size_multiple": 8,
        "min_size": 16,
        "max_size": None,
        "tensorrt_profile": None,
    }
    assert rgb["output"] == {"name": "classmap", "kind": "classmap", "dtype": "int32", "layout": "NHW"}
    assert bgr["input"]["normalization_fused"] is False and bgr["input"]["color"] == "bgr"
    np.testing.assert_allclose(bgr["input"]["mean"], IMAGENET_MEAN[::-1])
    np.testing.assert_allclose(bgr["input"]["std"], IMAGENET_STD[::-1])
    assert bgr["output"]["kind"] == "logits" and bgr["input"]["size_multiple"] == 1
    assert grey["input"]["shape"] == [2, 1, *IMAGE_SIZE] and grey["input"]["dynamic_axes"] == []
    assert grey["output"] == {"name": "probs", "kind": "probs", "dtype": "float32", "layout": "NCHW"}
    assert grey["num_classes"] == 1 and len(grey["palette"]) == 2 and grey["labels"] == ["bright"]


# --------------------------------------------------------------------------- the Python reference
def _run_size(manifest: dict, height: int, width: int) -> tuple[int, int]:
    """The bundle format's rule: the frame's size on fixed-free axes, rounded to size_multiple, >= min_size."""
    spec = manifest["input"]
    h_axis, w_axis = (1, 2) if spec["layout"] == "NHWC" else (2, 3)

    def pick(x: int, axis: int, name: str) -> int:
        if name not in spec["dynamic_axes"]:
            return spec["shape"][axis]
        m = spec["size_multiple"]
        return max(-(-spec["min_size"] // m) * m, (x + m // 2) // m * m)

    return pick(height, h_axis, "height"), pick(width, w_axis, "width")


def _grey(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of uint8 [..., 3] RGB as [..., 1], rounded as OpenCV's 8-bit conversion (15-bit fixed point)."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((9798 * r + 19235 * g + 3735 * b + (1 << 14)) >> 15).astype(np.uint8)[..., None]


def _bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Half-pixel bilinear resize of uint8 HWC, computed in float (OpenCV's own is 11-bit fixed point)."""
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    return np.clip(np.rint(y[0].permute(1, 2, 0).numpy()), 0, 255).astype(np.uint8)


def _model_input(manifest: dict, rgb: np.ndarray) -> np.ndarray:
    """The tensor the bundle's model takes for an RGB uint8 image, by the bundle format alone."""
    spec = manifest["input"]
    image = _grey(rgb) if spec["shape"][1 if spec["layout"] == "NCHW" else 3] == 1 else rgb
    if image.shape[2] == 3 and spec["color"] == "bgr":
        image = image[..., ::-1]
    size = _run_size(manifest, *rgb.shape[:2])
    if size != image.shape[:2]:
        image = _bilinear(image, size)
    if spec["dtype"] == "float32":
        image = image.astype(np.float32)
        if not spec["normalization_fused"]:
            image = (image / np.float32(255) - np.float32(spec["mean"])) / np.float32(spec["std"])
    if spec["layout"] == "NCHW":
        image = image.transpose(2, 0, 1)
    batch = 1 if "batch" in spec["dynamic_axes"] else spec["shape"][0]
    return np.ascontiguousarray(np.repeat(image[None], batch, axis=0))


def _onnxruntime_classmap(bundle: Path, manifest: dict, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    out = session.run([manifest["output"]["name"]], {manifest["input"]["name"]: x})[0]
    kind = manifest["output"]["kind"]
    if kind == "classmap":
        return out[0].astype(np.int64)
    if out.shape[1] == 1:
        return (out[0, 0] > (0.5 if kind == "probs" else 0.0)).astype(np.int64)
    return out[0].argmax(0)


def _nearest_rows_cols(source: tuple[int, int], target: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Source row/column of each target pixel in OpenCV's INTER_NEAREST (floor(x * src/dst), in doubles)."""
    (sh, sw), (th, tw) = source, target
    rows = np.minimum(np.floor(np.arange(th) * (1.0 / (th / sh))).astype(np.int64), sh - 1)
    cols = np.minimum(np.floor(np.arange(tw) * (1.0 / (tw / sw))).astype(np.int64), sw - 1)
    return rows, cols


def _resize_back(classes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows, cols = _nearest_rows_cols(classes.shape, size)
    return classes[np.ix_(rows, cols)]


# --------------------------------------------------------------------------- one run per bundle
@pytest.fixture(scope="session")
def test_image(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 67x45 RGB PNG of shapes the nets have learnt, and its pixels."""
    rgb = _pixels(make_shapes(1, size=IMAGE_SIZE, seed=9)[0])[0]  # all 4 classes; the net finds 3 of them
    path = tmp_path_factory.mktemp("cpp_image") / "frame.png"
    Image.fromarray(rgb).save(path)
    return path, rgb


@pytest.fixture(scope="session", params=["rgb_classmap", "bgr_logits", "grey_probs"])
def cpp_run(request, infer_program, bundles, test_image, tmp_path_factory) -> dict:
    """segdeploy_infer on the test image: its color and raw PNGs, the tensor it fed the model, and stdout."""
    name = request.param
    out = tmp_path_factory.mktemp(f"cpp_{name}")
    image_path, rgb = test_image
    proc = _infer(
        infer_program,
        bundles[name],
        image_path,
        "-o",
        out / "mask.png",
        "--raw",
        out / "raw.png",
        "--dump-input",
        out / "input.npy",
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((bundles[name] / "segdeploy.json").read_text())
    return {
        "name": name,
        "bundle": bundles[name],
        "manifest": manifest,
        "rgb": rgb,
        "stdout": proc.stdout,
        "color": np.asarray(Image.open(out / "mask.png").convert("RGB")),
        "raw": np.asarray(Image.open(out / "raw.png")).astype(np.int64),
        "input": np.load(out / "input.npy"),
    }


# --------------------------------------------------------------------------- tests: agreement with Python
@pytest.mark.parametrize("name", ["rgb_classmap", "bgr_logits", "grey_probs"])
def test_golden_check_passes(infer_program, bundles, name):
    proc = _infer(infer_program, bundles[name], "--check-golden")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("golden check passed on onnxruntime"), proc.stdout
    assert proc.stderr == ""


def test_runs_at_the_frame_size_when_the_model_accepts_it_else_the_nearest_valid_size(cpp_run):
    expected_size = {"rgb_classmap": (48, 64), "bgr_logits": IMAGE_SIZE, "grey_probs": IMAGE_SIZE}[cpp_run["name"]]
    x = cpp_run["input"]
    spatial = x.shape[1:3] if cpp_run["manifest"]["input"]["layout"] == "NHWC" else x.shape[2:4]
    assert spatial == expected_size
    assert f"model ran at {expected_size[1]}x{expected_size[0]}" in cpp_run["stdout"]
    assert cpp_run["raw"].shape == IMAGE_SIZE  # the mask comes back at the image's size
    if cpp_run["name"] == "grey_probs":  # fixed batch 2: the frame fills both items
        assert x.shape[0] == 2 and np.array_equal(x[0], x[1])


def test_cpp_input_tensor_matches_the_bundle_format(cpp_run):
    """Color order, grey conversion, layout, dtype and normalization as Python derives them from the manifest.

    Without a resize the tensors are identical (the float normalization runs the same float32 operations in the
    same order); OpenCV's fixed-point bilinear resize may round a pixel one level away from a float resize.
    """
    expected = _model_input(cpp_run["manifest"], cpp_run["rgb"])
    got = cpp_run["input"]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if cpp_run["name"] == "rgb_classmap":
        assert np.abs(got.astype(np.int64) - expected.astype(np.int64)).max() <= 1
    else:
        np.testing.assert_array_equal(got, expected)


def test_cpp_mask_equals_python_onnxruntime_on_the_same_input(cpp_run):
    """Same tensor in, same class map out, after the nearest-neighbour resize back: pixel for pixel."""
    classes = _onnxruntime_classmap(cpp_run["bundle"], cpp_run["manifest"], cpp_run["input"])
    np.testing.assert_array_equal(cpp_run["raw"], _resize_back(classes, IMAGE_SIZE))


def test_cpp_mask_matches_the_python_pipeline_except_near_ties(cpp_run, models):
    """The whole path against Python's (float resize, ONNX Runtime, argmax): at most 0.1% of pixels differ, and
    only where the net's two best classes nearly tie (among the 1% least confident pixels)."""
    manifest = cpp_run["manifest"]
    x = _model_input(manifest, cpp_run["rgb"])
    classes = _onnxruntime_classmap(cpp_run["bundle"], manifest, x)
    python_mask = _resize_back(classes, IMAGE_SIZE)
    differ = cpp_run["raw"] != python_mask
    assert classes.sum() > 0 and len(np.unique(python_mask)) > 1  # a mask with content, not all background
    if cpp_run["name"] != "rgb_classmap":  # no resize: nothing may differ
        assert not differ.any()
        return
    assert differ.mean() <= MAX_DIFFERING, f"{differ.sum()} pixels differ"
    with torch.no_grad():
        pixels = torch.from_numpy(x).float().permute(0, 3, 1, 2)
        logits = models["rgb_net"]((pixels / 255 - TRAIN_MEAN) / TRAIN_STD)[0].numpy()
    top2 = np.sort(logits, axis=0)[-2:]
    margin = top2[1] - top2[0]  # per model-grid pixel
    rows, cols = _nearest_rows_cols(margin.shape, IMAGE_SIZE)
    differing_margins = margin[np.ix_(rows, cols)][differ]
    assert np.all(differing_margins <= np.quantile(margin, 0.01)), (differing_margins, np.quantile(margin, 0.01))


def test_color_png_paints_the_class_map_with_the_bundle_palette(cpp_run):
    palette = np.array(cpp_run["manifest"]["palette"], dtype=np.uint8)
    assert cpp_run["color"].shape == (*IMAGE_SIZE, 3)
    np.testing.assert_array_equal(cpp_run["color"], palette[cpp_run["raw"]])


# --------------------------------------------------------------------------- tests: golden mismatches
def test_golden_class_map_tolerates_0_1_percent_of_pixels_and_no_more(infer_program, rgb_bundle_copy):
    path = rgb_bundle_copy / "golden" / "output.npy"
    golden = np.load(path)
    assert golden.size == 3072  # 0.1% is 3.07 pixels
    flat = golden.reshape(-1).copy()
    flat[:3] = (flat[:3] + 1) % 4
    np.save(path, flat.reshape(golden.shape))
    assert _infer(infer_program, rgb_bundle_copy, "--check-golden").returncode == 0
    flat[3] = (flat[3] + 1) % 4
    np.save(path, flat.reshape(golden.shape))
    proc = _infer(infer_program, rgb_bundle_copy, "--check-golden")
    _assert_one_error_line(proc, 4, "golden check failed", "4 of 3072 class-map pixels differ")


def test_golden_float_output_is_judged_relative_to_its_largest_value(infer_program, bundles, tmp_path):
    bundle = Path(shutil.copytree(bundles["bgr_logits"], tmp_path / "bundle"))
    path = bundle / "golden" / "output.npy"
    golden = np.load(path)
    np.save(path, golden * np.float32(1 + 5e-5))  # within 1e-4 * max|b| + 1e-6
    assert _infer(infer_program, bundle, "--check-golden").returncode == 0
    np.save(path, golden * np.float32(1 + 3e-4))
    proc = _infer(infer_program, bundle, "--check-golden")
    _assert_one_error_line(proc, 4, "golden check failed", "max|out - golden|", "limit")


# --------------------------------------------------------------------------- tests: refusals
def test_bad_json_manifest_is_one_line_and_exit_2(infer_program, rgb_bundle_copy, test_image, tmp_path):
    (rgb_bundle_copy / "segdeploy.json").write_text('{"schema_version": 1, "input": ')
    proc = _infer(infer_program, rgb_bundle_copy, test_image[0], "-o", tmp_path / "mask.png")
    _assert_one_error_line(proc, 2, "segdeploy.json", "not valid JSON")
    assert not (tmp_path / "mask.png").exists()


def test_manifest_missing_a_key_names_it(infer_program, rgb_bundle_copy):
    path = rgb_bundle_copy / "segdeploy.json"
    manifest = json.loads(path.read_text())
    del manifest["input"]["size_multiple"]
    path.write_text(json.dumps(manifest))
    _assert_one_error_line(_infer(infer_program, rgb_bundle_copy, "--check-golden"), 2, "'input.size_multiple'")


def test_missing_model_onnx_is_one_line_and_exit_2(infer_program, rgb_bundle_copy):
    (rgb_bundle_copy / "model.onnx").unlink()
    _assert_one_error_line(_infer(infer_program, rgb_bundle_copy, "--check-golden"), 2, "model.onnx")


def test_corrupt_model_onnx_is_one_line_and_exit_2(infer_program, rgb_bundle_copy):
    (rgb_bundle_copy / "model.onnx").write_bytes(b"not a protobuf" * 100)
    _assert_one_error_line(_infer(infer_program, rgb_bundle_copy, "--check-golden"), 2, "cannot load")


def test_missing_bundle_and_missing_manifest_are_exit_2(infer_program, tmp_path):
    _assert_one_error_line(_infer(infer_program, tmp_path / "nope", "--check-golden"), 2, "does not exist")
    _assert_one_error_line(_infer(infer_program, tmp_path, "--check-golden"), 2, "not a segdeploy bundle")


def test_missing_or_unreadable_image_is_one_line_and_exit_2(infer_program, bundles, tmp_path):
    proc = _infer(infer_program, bundles["rgb_classmap"], tmp_path / "missing.png", "-o", tmp_path / "mask.png")
    _assert_one_error_line(proc, 2, "missing.png", "no such image, directory or video file")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    proc = _infer(infer_program, bundles["rgb_classmap"], tmp_path / "broken.png", "-o", tmp_path / "mask.png")
    _assert_one_error_line(proc, 2, "not an image")
    assert not (tmp_path / "mask.png").exists()


def test_output_in_a_missing_directory_is_refused_before_inference(infer_program, bundles, test_image, tmp_path):
    proc = _infer(infer_program, bundles["rgb_classmap"], test_image[0], "-o", tmp_path / "no" / "mask.png")
    _assert_one_error_line(proc, 2, "does not exist")


def test_tensorrt_backend_without_tensorrt_is_exit_5(infer_program, bundles, test_image, tmp_path):
    version = subprocess.run([str(infer_program), "--version"], capture_output=True, text=True, check=False).stdout
    if "TensorRT: not built" not in version:
        pytest.skip(f"this build has TensorRT: {version.strip()}")
    proc = _infer(infer_program, bundles["rgb_classmap"], test_image[0], "-o", tmp_path / "m.png", "--backend", "trt")
    _assert_one_error_line(proc, 5, "TensorRT")
    _assert_one_error_line(_infer(infer_program, bundles["rgb_classmap"], "--check-golden", "--backend", "trt"), 5)


def test_unknown_backend_and_bad_arguments_are_exit_2(infer_program, bundles):
    _assert_one_error_line(
        _infer(infer_program, bundles["rgb_classmap"], "--check-golden", "--backend", "cuda"), 2, "unknown backend"
    )
    _assert_one_error_line(_infer(infer_program, bundles["rgb_classmap"]), 2, "expected BUNDLE_DIR and INPUT")
