"""``segdeploy bundle``: what a bundle holds, the checks that need no server, and the inputs it refuses.

Models are tiny BatchNorm-calibrated nets exported by ``export_onnx`` once per session; each test that
damages a bundle works on its own copy. Tests that parse Triton configs need Triton's ModelConfig schema
(``pip install 'segdeploy[triton]'``) and are skipped without it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import calibrate_batchnorm
from torch import nn
from typer.testing import CliRunner

from segdeploy.bundle import check_bundle, write_bundle
from segdeploy.bundle import deepstream as ds
from segdeploy.bundle.manifest import dumps, file_hashes, palette
from segdeploy.cli import app
from segdeploy.errors import MissingDependencyError, UserInputError, VerificationError
from segdeploy.export.onnx import export_onnx
from segdeploy.fileio import sha256_file
from segdeploy.runtime.sidecar import sidecar_path
from segdeploy.runtime.trt_build import derive_profile, make_sidecar, plan_build

runner = CliRunner()
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _triton_schema() -> bool:
    from segdeploy.bundle import triton

    try:
        triton.model_config_module()
    except MissingDependencyError:
        return False
    return True


needs_triton = pytest.mark.skipif(
    not _triton_schema(), reason="Triton's ModelConfig schema is not installed (pip install 'segdeploy[triton]')"
)


class TinySeg(nn.Module):
    """Conv/BN/ReLU, a stride-2 conv and a bilinear resize back: any size >= 2, full-resolution scores."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(self.body(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


# name -> (in channels, classes, NCHW trace shape, export options)
FLAVOURS = {
    # raw BGR frames in, normalization and argmax in the graph, at an odd size
    "u8_classmap": (3, 4, (1, 3, 27, 41), {"input_format": "uint8-nhwc", "color": "bgr", "output": "classmap"}),
    # FP16 with probabilities and one std for all channels: what DeepStream's nvinfer can run
    "fp16_probs": (
        3,
        4,
        (2, 3, 32, 40),
        {"precision": "fp16", "output": "probs", "mean": (0.5, 0.4, 0.3), "std": (0.25, 0.25, 0.25)},
    ),
    # the plain export: float32 in, ImageNet normalization by the caller, logits out
    "logits": (3, 4, (1, 3, 24, 32), {}),
    # one gray channel, one class, fixed shape
    "gray_probs": (1, 1, (2, 1, 20, 28), {"output": "probs", "mean": (0.5,), "std": (0.2,), "dynamic": False}),
}


@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("bundle_models")
    files = {}
    for name, (channels, classes, shape, options) in FLAVOURS.items():
        torch.manual_seed(0)
        net = calibrate_batchnorm(TinySeg(channels, classes), (2, channels, 24, 24))
        files[name] = directory / f"{name}.onnx"
        export_onnx(net, files[name], input_shape=shape, opset=17, **options)
    return files


@pytest.fixture(scope="session")
def bundles(onnx_files, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    return {name: write_bundle(path, root / name) for name, path in onnx_files.items()}


@pytest.fixture
def copy_of(bundles, tmp_path):
    def copy(name: str) -> Path:
        return Path(shutil.copytree(bundles[name], tmp_path / name))

    return copy


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "segdeploy.json").read_text())


def _rehash(bundle: Path) -> None:
    """Make the manifest's file list true again, as someone editing a bundle by hand would."""
    manifest = _manifest(bundle)
    manifest["files"] = file_hashes(bundle)
    (bundle / "segdeploy.json").write_text(dumps(manifest))


def _invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _one_error_line(output: str, *needles: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def _listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


# --------------------------------------------------------------------------- contents
def test_bundle_holds_the_files_of_its_layout(bundles):
    assert _listing(bundles["u8_classmap"]) == [
        "README.md",
        "golden",
        "golden/input.npy",
        "golden/output.npy",
        "labels.txt",
        "model.onnx",
        "segdeploy.json",
        "triton",
        "triton/u8_classmap",
        "triton/u8_classmap/1",
        "triton/u8_classmap/1/model.onnx",
        "triton/u8_classmap/config.pbtxt",
    ]
    assert "deepstream/config_infer_primary.txt" in _listing(bundles["fp16_probs"])


def test_manifest_describes_a_uint8_bgr_classmap_file(bundles, onnx_files):
    bundle = bundles["u8_classmap"]
    manifest = _manifest(bundle)
    assert manifest["schema_version"] == 1 and manifest["name"] == "u8_classmap"
    assert manifest["num_classes"] == 4 and manifest["labels"] == ["class_0", "class_1", "class_2", "class_3"]
    assert manifest["palette"] == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17 and manifest["engine"] is None
    spec = manifest["input"]
    assert (spec["dtype"], spec["layout"], spec["color"], spec["normalization_fused"]) == ("uint8", "NHWC", "bgr", True)
    assert spec["shape"] == [1, 27, 41, 3] and spec["dynamic_axes"] == ["batch", "height", "width"]
    # export takes mean/std in RGB order; the manifest gives them in the order of the input's channels (B, G, R)
    np.testing.assert_allclose(spec["mean"], IMAGENET_MEAN[::-1])
    np.testing.assert_allclose(spec["std"], IMAGENET_STD[::-1])
    assert manifest["output"] == {"name": "classmap", "kind": "classmap", "dtype": "int32", "layout": "NHW"}
    assert manifest["golden"] == {"input": "golden/input.npy", "output": "golden/output.npy"}
    assert manifest["files"] == file_hashes(bundle) and "segdeploy.json" not in manifest["files"]
    assert (bundle / "model.onnx").read_bytes() == onnx_files["u8_classmap"].read_bytes()
    assert (bundle / "labels.txt").read_text() == "class_0\nclass_1\nclass_2\nclass_3\n"


def test_golden_pair_is_the_files_own_input_and_onnxruntimes_output(bundles):
    for name, bundle in bundles.items():
        spec = _manifest(bundle)["input"]
        x, y = np.load(bundle / "golden/input.npy"), np.load(bundle / "golden/output.npy")
        assert x.dtype.name == spec["dtype"] and list(x.shape) == spec["shape"], name
        session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"input": x})[0], y)
    x = np.load(bundles["u8_classmap"] / "golden/input.npy")
    assert x.std() > 20  # an image with content, not a constant
    y = np.load(bundles["u8_classmap"] / "golden/output.npy")
    assert len(np.unique(y)) > 1  # calibrated weights: more than one class in the golden map


def test_float_golden_input_is_normalized_like_the_manifest_says(bundles):
    spec = _manifest(bundles["fp16_probs"])["input"]
    x = np.load(bundles["fp16_probs"] / "golden/input.npy")
    pixels = x * np.float32(spec["std"]).reshape(1, 3, 1, 1) + np.float32(spec["mean"]).reshape(1, 3, 1, 1)
    pixels = pixels * 255
    np.testing.assert_allclose(pixels, np.rint(pixels), atol=1e-3)  # whole 0..255 values: an image, normalized
    assert pixels.min() > -0.5 and pixels.max() < 255.5


def test_palette_is_fixed_distinct_and_has_two_colors_for_one_class(bundles):
    assert palette(256)[:4] == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert len({tuple(c) for c in palette(256)}) == 256
    manifest = _manifest(bundles["gray_probs"])
    assert manifest["num_classes"] == 1 and manifest["palette"] == [[0, 0, 0], [128, 0, 0]]
    assert manifest["labels"] == ["class_0"]


def test_readme_says_what_each_file_is_and_how_to_run_it(bundles):
    text = (bundles["fp16_probs"] / "README.md").read_text()
    for needle in (
        "segdeploy.json",
        "golden/input.npy",
        "triton/fp16_probs/",
        "config_infer_primary.txt",
        "onnxruntime",
        "segdeploy_infer",
        "tritonserver",
        "nvinfer",
        "--check",
    ):
        assert needle in text, needle


# --------------------------------------------------------------------------- checks pass
@pytest.mark.parametrize("name", list(FLAVOURS))
def test_check_passes_on_fresh_bundles(bundles, name):
    report = check_bundle(bundles[name])
    assert report.ok, report.problems
    expected = {"manifest", "files", "model", "golden", f"triton {name}", "deepstream"}
    assert {r.name for r in report.results} == expected
    assert all(r.status == "ok" for r in report.results if not r.name.startswith("triton"))


def test_cli_check_exits_0_and_lists_the_checks(bundles):
    code, output = _invoke("bundle", "--check", bundles["fp16_probs"])
    assert code == 0, output
    assert "bundle OK" in output and "golden" in output and "deepstream" in output


@needs_triton
@pytest.mark.parametrize("name", list(FLAVOURS))
def test_triton_configs_parse_with_tritons_schema_and_match_the_onnx(bundles, name):
    from segdeploy.bundle.triton import model_config_module, parse_config

    report = check_bundle(bundles[name])
    assert [r.status for r in report.results if r.name.startswith("triton")] == ["ok"]
    config = parse_config((bundles[name] / f"triton/{name}/config.pbtxt").read_text())
    assert config.name == name and config.backend == "onnxruntime"
    if name == "gray_probs":  # fixed batch: Triton must not batch, the dims carry the batch
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [2, 1, 20, 28] and list(config.output[0].dims) == [2, 1, 20, 28]
    else:
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    if name == "u8_classmap":
        types = model_config_module().DataType
        assert list(config.input[0].dims) == [-1, -1, 3] and list(config.output[0].dims) == [-1, -1]
        assert config.input[0].data_type == types.Value("TYPE_UINT8")
        assert config.output[0].data_type == types.Value("TYPE_INT32")


# --------------------------------------------------------------------------- checks fail
def test_check_fails_on_an_edited_model_file(copy_of):
    bundle = copy_of("u8_classmap")
    model = onnx.load(bundle / "model.onnx")
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) > 64)
    data = bytearray(weight.raw_data)
    data[:4] = np.float32(7.0).tobytes()
    weight.raw_data = bytes(data)
    onnx.save(model, bundle / "model.onnx")
    code, output = _invoke("bundle", "--check", bundle)
    assert code == 4
    _one_error_line(output, "model.onnx differs from the manifest's sha256")
    # even with the hashes made true again, ONNX Runtime no longer reproduces the golden output (and, where the
    # Triton schema is installed, the Triton model's copy is no longer the bundle's model)
    _rehash(bundle)
    problems = check_bundle(bundle).problems
    assert "does not reproduce golden/output.npy" in problems[0], problems
    assert all("golden" in p or "triton/u8_classmap/1/model.onnx is not the bundle's" in p for p in problems)


@needs_triton
def test_check_fails_on_a_wrong_class_count_in_the_triton_config(copy_of):
    bundle = copy_of("fp16_probs")
    config = bundle / "triton/fp16_probs/config.pbtxt"
    config.write_text(config.read_text().replace("dims: [ 4, -1, -1 ]", "dims: [ 5, -1, -1 ]"))
    code, output = _invoke("bundle", "--check", bundle)
    assert code == 4
    _one_error_line(output, "triton/fp16_probs/config.pbtxt differs from the manifest's sha256")
    _rehash(bundle)
    code, output = _invoke("bundle", "--check", bundle)
    assert code == 4
    _one_error_line(output, "triton/fp16_probs/config.pbtxt", "output 'probs' has 5 classes, the model has 4")


@needs_triton
@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (("max_batch_size: 8", "max_batch_sise: 8"), "does not parse as a Triton ModelConfig"),
        (("TYPE_FP32", "TYPE_FLOAT32"), "does not parse as a Triton ModelConfig"),
        (('name: "input"', 'name: "image"'), "input 'image' is not a model input"),
        (("data_type: TYPE_FP32\n    dims: [ 3", "data_type: TYPE_FP16\n    dims: [ 3"), "data_type TYPE_FP16"),
        (("dims: [ 3, -1, -1 ]", "dims: [ -1, -1 ]"), "rank 3"),
        (('name: "fp16_probs"', 'name: "other"'), "is not the directory's"),
    ],
)
def test_check_names_what_is_wrong_in_a_triton_config(copy_of, edit, fragment):
    bundle = copy_of("fp16_probs")
    config = bundle / "triton/fp16_probs/config.pbtxt"
    text = config.read_text()
    assert edit[0] in text
    config.write_text(text.replace(edit[0], edit[1], 1))
    _rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and fragment in problems[0], problems


@pytest.mark.parametrize("missing", ["golden/output.npy", "golden/input.npy"])
def test_check_fails_on_a_missing_golden_file(copy_of, missing):
    bundle = copy_of("logits")
    (bundle / missing).unlink()
    code, output = _invoke("bundle", "--check", bundle)
    assert code == 4
    _one_error_line(output, f"{missing} is listed in the manifest but missing")


def test_check_fails_on_extra_and_unlisted_files_and_a_bad_manifest(copy_of, tmp_path):
    bundle = copy_of("logits")
    (bundle / "notes.txt").write_text("hello")
    assert check_bundle(bundle).problems == ["notes.txt is in the bundle but not in the manifest"]
    (bundle / "segdeploy.json").write_text('{"schema_version": 1, "input": ')
    code, output = _invoke("bundle", "--check", bundle)
    assert code == 4
    _one_error_line(output, "segdeploy.json is not valid JSON")
    code, output = _invoke("bundle", "--check", tmp_path)
    assert code == 2
    _one_error_line(output, "no segdeploy.json: not a segdeploy bundle")


def test_check_fails_when_the_manifest_disagrees_with_the_model(copy_of):
    bundle = copy_of("u8_classmap")
    manifest = _manifest(bundle)
    manifest["input"]["color"] = "rgb"  # a consumer would feed the channels in the wrong order
    (bundle / "segdeploy.json").write_text(dumps(manifest))
    problems = check_bundle(bundle).problems
    assert problems == ["segdeploy.json: input.color is 'rgb', model.onnx says 'bgr'"]
    with pytest.raises(VerificationError, match="input.color"):
        check_bundle(bundle).raise_for_problems()


# --------------------------------------------------------------------------- DeepStream
def _key_file(bundle: Path) -> dict[str, str]:
    return ds.parse_key_file((bundle / "deepstream/config_infer_primary.txt").read_text())["property"]


def test_deepstream_config_has_the_segmentation_keys_and_no_inline_comments(bundles):
    text = (bundles["fp16_probs"] / "deepstream/config_infer_primary.txt").read_text()
    assert all("#" not in line for line in text.splitlines() if not line.startswith("#"))
    props = _key_file(bundles["fp16_probs"])
    assert props["network-type"] == "2" and props["network-mode"] == "2"  # FP16
    assert props["infer-dims"] == "3;32;40" and props["batch-size"] == "1"
    assert props["onnx-file"] == "../model.onnx" and "model-engine-file" not in props
    assert props["model-color-format"] == "0" and props["network-input-order"] == "0"
    assert props["num-detected-classes"] == "4" and props["output-blob-names"] == "probs"
    assert props["segmentation-threshold"] == "0" and props["segmentation-output-order"] == "0"
    gray = _key_file(bundles["gray_probs"])
    assert gray["model-color-format"] == "2" and gray["segmentation-threshold"] == "0.5"
    assert gray["infer-dims"] == "1;20;28" and gray["batch-size"] == "2" and gray["network-mode"] == "0"


def test_deepstream_normalization_is_the_models_own(bundles):
    """nvinfer feeds ``net-scale-factor * (pixel - offsets[c])``: for the same frame the model must see what the
    manifest's ``(pixel / 255 - mean[c]) / std[c]`` gives, so the outputs agree."""
    bundle = bundles["fp16_probs"]
    props, spec = _key_file(bundle), _manifest(bundle)["input"]
    scale, offsets = float(props["net-scale-factor"]), np.float64([float(v) for v in props["offsets"].split(";")])
    pixels = np.random.default_rng(0).integers(0, 256, (1, 3, 32, 40)).astype(np.float64)
    nvinfer = scale * (pixels - offsets.reshape(1, 3, 1, 1))
    mean, std = (np.float64(spec[key]).reshape(1, 3, 1, 1) for key in ("mean", "std"))
    manifest = (pixels / 255 - mean) / std
    np.testing.assert_allclose(nvinfer, manifest, rtol=0, atol=1e-6)
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    a = session.run(None, {"input": nvinfer.astype(np.float32)})[0]
    b = session.run(None, {"input": manifest.astype(np.float32)})[0]
    np.testing.assert_array_equal(a.argmax(1), b.argmax(1))


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("u8_classmap", "raw uint8 frames"),
        ("u8_classmap", "not an int32 class map"),
        ("logits", "needs probabilities"),
        ("logits", "std differs per channel"),
    ],
)
def test_no_deepstream_config_for_files_nvinfer_would_misread(bundles, name, reason):
    bundle = bundles[name]
    assert not (bundle / "deepstream").exists()
    reasons, _ = ds.fit(_manifest(bundle))
    assert any(reason in r for r in reasons), reasons
    assert reason in (bundle / "README.md").read_text()


def test_cli_bundle_says_why_there_is_no_deepstream_config(onnx_files, tmp_path):
    code, output = _invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b")
    assert code == 0, output
    assert "deepstream: no config written:" in output and "needs probabilities" in output
    assert "std differs per channel" in output


def test_check_fails_on_a_deepstream_config_nvinfer_would_misread(copy_of, bundles):
    bundle = copy_of("logits")
    (bundle / "deepstream").mkdir()
    shutil.copy(bundles["fp16_probs"] / "deepstream/config_infer_primary.txt", bundle / "deepstream")
    _rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and "is present but nvinfer cannot run this model" in problems[0]


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (("network-mode=2", "network-mode=2 # FP16"), "inline comment"),
        (("network-mode=2", "network-mode=3"), "network-mode=3 is not 0 (FP32), 1 (INT8) or 2 (FP16)"),
        (("network-mode=2", "network-mode=0"), "network-mode=0 but the model is fp16"),
        (("model-color-format=0", "model-color-format=1"), "model-color-format=1 but the model takes rgb"),
        (("output-blob-names=probs", "output-blob-names=logits"), "are not model outputs"),
        (("num-detected-classes=4", "num-detected-classes=21"), "num-detected-classes=21 but the model has 4"),
        (("infer-dims=3;32;40", "infer-dims=3;32"), "infer-dims has 2 values"),
        (("offsets=127.5;102;76.5", "offsets=123.675;116.28;103.53"), "offsets[0]=123.675"),
        (("net-scale-factor=0.01568627451", "net-scale-factor=0.0174"), "does not divide channel 0"),
        (("segmentation-threshold=0", "segmentation-threshold=-1"), "segmentation-threshold=-1"),
        (("onnx-file=../model.onnx", "onnx-file=../../model.onnx"), "onnx-file=../../model.onnx does not name a file"),
        (("[property]", "[properties]"), "has no [property] group"),
        (("gpu-id=0", "gpu-id=0\nbatch-size=4"), "key 'batch-size' appears twice"),
        (("gpu-id=0", "gpu-id=0\nmodel-file=x"), "unknown Gst-nvinfer key(s) model-file"),
        (("network-type=2", "network-type=1"), "network-type=1, expected 2"),
    ],
)
def test_deepstream_check_names_bad_keys_values_and_syntax(copy_of, edit, fragment):
    bundle = copy_of("fp16_probs")
    path = bundle / "deepstream/config_infer_primary.txt"
    text = path.read_text()
    assert edit[0] in text, edit[0]
    path.write_text(text.replace(edit[0], edit[1], 1))
    _rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and fragment in problems[0], problems


# --------------------------------------------------------------------------- TensorRT engine (fake plan bytes)
@pytest.fixture
def fake_engine(onnx_files, tmp_path) -> Path:
    """Plan bytes and the sidecar `segdeploy build` writes beside them (made with its own functions)."""
    onnx_path = onnx_files["fp16_probs"]
    engine = tmp_path / "fp16_probs.engine"
    engine.write_bytes(b"\x00fake TensorRT plan bytes" * 40)
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    profile = derive_profile(metadata, min_shape="1x3x32x32", opt_shape="2x3x32x40", max_shape="4x3x64x64")
    sidecar = make_sidecar(
        plan=plan_build(10, "fp16", None),
        profile=profile,
        input_name="input",
        input_format="float32-nchw",
        trt_version="10.3.0.30",
        gpu_name="Orin (nvgpu)",
        compute_capability="8.7",
        onnx_path=onnx_path,
        onnx_sha256=sha256_file(onnx_path),
        engine_sha256=sha256_file(engine),
        workspace_gb=1.0,
        timing_cache=None,
        build_seconds=1.0,
    )
    sidecar_path(engine).write_text(json.dumps(sidecar))
    return engine


def test_engine_bundle_has_the_raw_plan_its_facts_and_a_tensorrt_triton_model(onnx_files, fake_engine, tmp_path):
    bundle = write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine, name="seg")
    assert (bundle / "model.plan").read_bytes() == fake_engine.read_bytes()  # nothing prepended
    assert (bundle / "triton/seg_trt/1/model.plan").read_bytes() == fake_engine.read_bytes()
    manifest = _manifest(bundle)
    assert manifest["engine"] == {
        "file": "model.plan",
        "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin (nvgpu)",
        "compute_capability": "8.7",
        "precision": "fp16",
    }
    assert manifest["input"]["tensorrt_profile"] == {
        "min": [1, 3, 32, 32],
        "opt": [2, 3, 32, 40],
        "max": [4, 3, 64, 64],
    }
    trt_config = (bundle / "triton/seg_trt/config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in trt_config and "max_batch_size: 4" in trt_config
    assert "max_batch_size: 4" in (bundle / "triton/seg/config.pbtxt").read_text()  # the profile bounds the batch
    props = _key_file(bundle)
    assert props["model-engine-file"] == "../model.plan" and props["batch-size"] == "4"
    assert props["infer-dims"] == "3;32;40"  # the profile's opt size
    assert "TensorRT 10.3.0.30" in (bundle / "README.md").read_text()
    report = check_bundle(bundle)
    assert report.ok, report.problems
    assert {r.name for r in report.results} >= {"triton seg", "triton seg_trt"}


@needs_triton
def test_check_refuses_a_tensorrt_config_batching_beyond_the_profile(onnx_files, fake_engine, tmp_path):
    bundle = write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine, name="seg")
    config = bundle / "triton/seg_trt/config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size: 4", "max_batch_size: 16"))
    _rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and "exceeds the engine profile's largest batch 4" in problems[0], problems


def test_engine_without_a_sidecar_is_refused_and_nothing_written(onnx_files, fake_engine, tmp_path):
    sidecar_path(fake_engine).unlink()
    code, output = _invoke("bundle", onnx_files["fp16_probs"], "--engine", fake_engine, "-o", tmp_path / "b")
    assert code == 2
    _one_error_line(output, "has no sidecar", "segdeploy build")
    assert _listing(tmp_path) == ["fp16_probs.engine"]


def test_engine_built_from_another_onnx_or_changed_since_is_refused(onnx_files, fake_engine, tmp_path):
    with pytest.raises(UserInputError, match="was built from another ONNX file"):
        write_bundle(onnx_files["logits"], tmp_path / "b", engine=fake_engine)
    fake_engine.write_bytes(b"another plan")
    with pytest.raises(UserInputError, match="not the file its sidecar describes"):
        write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine)
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- bad input, atomic writes
def test_non_segdeploy_onnx_is_refused_naming_the_missing_metadata(onnx_files, tmp_path):
    model = onnx.load(onnx_files["logits"])
    kept = [p for p in model.metadata_props if p.key not in ("num_classes", "trace_shape")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "partial.onnx")
    code, output = _invoke("bundle", tmp_path / "partial.onnx", "-o", tmp_path / "b")
    assert code == 2
    _one_error_line(output, "lacks segdeploy metadata (num_classes, trace_shape missing)", "segdeploy export")
    del model.metadata_props[:]
    onnx.save(model, tmp_path / "plain.onnx")
    code, output = _invoke("bundle", tmp_path / "plain.onnx", "-o", tmp_path / "b")
    assert code == 2
    _one_error_line(output, "has no segdeploy metadata")
    assert not (tmp_path / "b").exists()


def test_labels_must_match_the_class_count(onnx_files, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("background\ncat\ndog\n")
    code, output = _invoke("bundle", onnx_files["logits"], "--labels", labels, "-o", tmp_path / "b")
    assert code == 2
    _one_error_line(output, "has 3 labels but the model has 4 classes")
    assert not (tmp_path / "b").exists()
    labels.write_text("background\ncat\ndog\nbird\n\n")
    bundle = write_bundle(onnx_files["logits"], tmp_path / "b", labels=labels)
    assert _manifest(bundle)["labels"] == ["background", "cat", "dog", "bird"]
    assert (bundle / "labels.txt").read_text() == "background\ncat\ndog\nbird\n"


def test_existing_directory_is_kept_without_force_and_replaced_with_it(onnx_files, tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    code, output = _invoke("bundle", onnx_files["logits"], "-o", target)
    assert code == 2
    _one_error_line(output, "exists and is not empty", "--force")
    assert _listing(target) == ["mine.txt"]
    code, output = _invoke("bundle", onnx_files["logits"], "-o", target, "--force")
    assert code == 0, output
    assert "mine.txt" not in _listing(target) and check_bundle(target).ok
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary or old directories left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert write_bundle(onnx_files["logits"], empty) == empty  # an empty directory is fine


def test_force_refuses_to_replace_a_directory_holding_an_input_or_the_working_directory(
    onnx_files, tmp_path, monkeypatch
):
    target = tmp_path / "b"
    target.mkdir()
    shutil.copy(onnx_files["logits"], target / "model_in.onnx")
    (target / "labels.txt").write_text("a\nb\nc\nd\n")
    with pytest.raises(UserInputError, match="holds the input"):
        write_bundle(target / "model_in.onnx", target, force=True)
    with pytest.raises(UserInputError, match="holds the input"):
        write_bundle(onnx_files["logits"], target, labels=target / "labels.txt", force=True)
    monkeypatch.chdir(target)
    with pytest.raises(UserInputError, match="current directory"):
        write_bundle(onnx_files["logits"], ".", force=True)
    assert _listing(target) == ["labels.txt", "model_in.onnx"]


def test_a_failure_midway_leaves_no_bundle_and_keeps_the_old_one(onnx_files, tmp_path, monkeypatch):
    from segdeploy.bundle import write as writer

    def broken(root, metadata):
        (root / "golden").mkdir()
        raise RuntimeError("disk full")

    monkeypatch.setattr(writer, "_write_golden", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(onnx_files["logits"], tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "previous.txt").write_text("old bundle")
    with pytest.raises(RuntimeError, match="disk full"):
        write_bundle(onnx_files["logits"], old, force=True)
    assert _listing(tmp_path) == ["old", "old/previous.txt"]


@pytest.mark.parametrize(
    "args",
    [
        ("--name", "bad name!"),
        ("--name", "seg_trt"),
    ],
)
def test_bad_names_and_argument_mixes_are_one_line(onnx_files, tmp_path, args):
    code, output = _invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b", *args)
    assert code == 2
    _one_error_line(output, "bad bundle name")
    code, output = _invoke("bundle", "--check", tmp_path, "-o", tmp_path / "b")
    assert code == 2
    _one_error_line(output, "drop -o")
    code, output = _invoke("bundle", onnx_files["logits"])
    assert code == 2
    _one_error_line(output, "-o DIR")


def test_default_name_comes_from_the_file_name(onnx_files, tmp_path):
    fp16 = tmp_path / "unet.fp16.onnx"
    shutil.copy(onnx_files["logits"], fp16)
    bundle = write_bundle(fp16, tmp_path / "b")
    assert _manifest(bundle)["name"] == "unet_fp16" and (bundle / "triton/unet_fp16/config.pbtxt").is_file()
    assert re.search(r'name: "unet_fp16"', (bundle / "triton/unet_fp16/config.pbtxt").read_text())
