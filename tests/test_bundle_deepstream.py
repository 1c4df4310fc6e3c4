"""The bundle's DeepStream files: the derived ONNX nvinfer runs, the Gst-nvinfer config, and ``--check``'s
simulation of nvinfer, which must give the PyTorch model's own class map."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from bundle_helpers import (
    edit_text,
    fake_engine_for,
    invoke,
    manifest_of,
    rehash,
    tiny_net,
)

from segdeploy.artifact import require_metadata
from segdeploy.bundle import check_bundle, write_bundle
from segdeploy.bundle import deepstream as ds
from segdeploy.bundle.manifest import BundleManifest
from segdeploy.bundle.nvinfer import deepstream_model, simulate, threshold
from segdeploy.frames import FramePipeline

CONFIG = "deepstream/config_infer_primary.txt"


def _props(bundle) -> dict[str, str]:
    return ds.parse_key_file((bundle / CONFIG).read_text())["property"]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- nvinfer gives the model's class map
@pytest.mark.parametrize("name", ["logits", "u8_classmap"])
def test_nvinfer_simulated_on_random_frames_gives_the_pytorch_models_class_map(bundles, name):
    """float32 input with ImageNet's per-channel std and logits out; raw uint8 NHWC BGR frames with a class map out:
    nvinfer's conversion, ``net-scale-factor * (x - offsets)`` and its parser on the bundle's DeepStream ONNX give
    exactly what PyTorch gives for the frame pipeline's input."""
    from segdeploy.export.io import FusedIO

    bundle = bundles[name]
    manifest = BundleManifest.read(bundle)
    metadata = require_metadata(bundle / "model.onnx")
    props = _props(bundle)
    session = ort.InferenceSession(str(bundle / "deepstream/nvinfer.onnx"), providers=["CPUExecutionProvider"])
    torch_model = FusedIO(tiny_net(name), metadata.preprocessing, metadata.output).eval()
    rng = np.random.default_rng(7)
    _, h, w = (int(v) for v in props["infer-dims"].split(";"))
    compared = 0
    for _ in range(4):
        frames = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)  # random RGB frames at the network's size
        got, _ = simulate(
            frames,
            color_format=int(props["model-color-format"]),
            scale=float(props["net-scale-factor"]),
            offsets=[float(v) for v in props["offsets"].split(";")],
            run=lambda x: session.run(None, {"input": x})[0],
            cut=float(props["segmentation-threshold"]),
        )
        with torch.no_grad():
            out = torch_model(torch.from_numpy(manifest.pipeline.to_input(list(frames), frame_color="rgb"))).numpy()
        expected = manifest.pipeline.to_classmap(out)
        np.testing.assert_array_equal(got, expected)
        compared += expected.size
        assert len(np.unique(expected)) > 1
    assert compared == 4 * 2 * h * w


@pytest.mark.parametrize("name", ["logits", "u8_classmap", "fp16_probs", "gray_probs"])
def test_the_deepstream_onnx_is_valid_and_takes_float_pixels_in_nchw(bundles, name):
    model = onnx.load(bundles[name] / "deepstream/nvinfer.onnx")
    onnx.checker.check_model(model, full_check=True)
    (graph_input,) = model.graph.input
    assert graph_input.name == "input" and graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in model.graph.output] == ["scores"]
    assert not any(p.key == "num_classes" for p in model.metadata_props)  # not mistaken for a segdeploy export
    channels = len(manifest_of(bundles[name])["input"]["mean"])
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[1].dim_value == channels  # NCHW whatever the model's own layout


def test_the_deepstream_onnx_passes_segdeploys_tensorrt_lint_and_builds_facts(bundles):
    """The README's `segdeploy build deepstream/nvinfer.onnx` hint gets past every step before TensorRT."""
    from segdeploy.export.lint import lint_onnx
    from segdeploy.runtime.trt_build import read_onnx_facts
    from segdeploy.runtime.trt_plan import derive_profile

    for name in ("u8_classmap", "logits"):
        path = bundles[name] / "deepstream/nvinfer.onnx"
        report = lint_onnx(path)
        assert report.ok, report.summary()
        facts = read_onnx_facts(path)
        assert facts.input_name == "input" and facts.precision == "fp32"
        c, h, w = (int(v) for v in _props(bundles[name])["infer-dims"].split(";"))
        profile = derive_profile(
            facts.metadata, f"1x{c}x{h}x{w}", f"1x{c}x{h}x{w}", f"1x{c}x{h}x{w}", graph_shape=facts.input_dims
        )
        assert profile.opt == (1, c, h, w)


def test_one_class_models_get_two_score_channels_that_reproduce_their_zero_one_map(onnx_files):
    model = onnx.load(onnx_files["gray_probs"])
    metadata = require_metadata(model)
    pipe = FramePipeline.from_metadata(metadata)
    derived = _session(deepstream_model(model, metadata))
    frames = np.random.default_rng(3).integers(0, 256, (2, 20, 28, 1), dtype=np.uint8)
    reference = pipe.to_classmap(_session(model).run(None, {"input": pipe.to_input(list(frames))})[0])
    run = lambda x: derived.run(None, {"input": x})[0]
    got, _ = simulate(frames, color_format=2, scale=1.0, offsets=[0.0], run=run, cut=threshold(1))
    np.testing.assert_array_equal(got, reference)
    assert set(np.unique(reference)) == {0, 1}


# --------------------------------------------------------------------------- the config
def test_deepstream_config_has_the_segmentation_keys_and_no_inline_comments(bundles):
    text = (bundles["fp16_probs"] / CONFIG).read_text()
    assert all("#" not in line for line in text.splitlines() if not line.startswith("#"))
    props = _props(bundles["fp16_probs"])
    assert props["network-type"] == "2" and props["network-mode"] == "2"  # FP16
    assert props["infer-dims"] == "3;32;40" and props["batch-size"] == "1"
    assert props["onnx-file"] == "nvinfer.onnx"
    assert props["model-engine-file"] == "nvinfer.onnx_b1_gpu0_fp16.engine"  # the name nvinfer saves its build as
    assert props["net-scale-factor"] == "1" and props["offsets"] == "0;0;0"
    assert props["model-color-format"] == "0" and props["network-input-order"] == "0"
    assert props["num-detected-classes"] == "4" and props["output-blob-names"] == "scores"
    assert props["segmentation-threshold"] == "0.125" and props["segmentation-output-order"] == "0"
    gray = _props(bundles["gray_probs"])
    assert gray["model-color-format"] == "2" and gray["num-detected-classes"] == "2"
    assert gray["infer-dims"] == "1;20;28" and gray["batch-size"] == "2" and gray["network-mode"] == "0"
    assert gray["model-engine-file"] == "nvinfer.onnx_b2_gpu0_fp32.engine"
    assert set(props) <= ds.KNOWN_KEYS and set(gray) <= ds.KNOWN_KEYS


def test_every_export_gets_a_config_and_the_command_says_what_it_runs(onnx_files, tmp_path):
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b")
    assert code == 0, output
    assert "deepstream: deepstream/config_infer_primary.txt (derived: runs deepstream/nvinfer.onnx" in output


def test_check_tolerates_the_engine_nvinfer_builds_and_nothing_else(copy_of):
    bundle = copy_of("logits")
    (bundle / "deepstream/nvinfer.onnx_b1_gpu0_fp32.engine").write_bytes(b"engine nvinfer built")
    (bundle / "deepstream/nvinfer.onnx_b1_gpu0_fp32.engine.json").write_text("{}")  # or `segdeploy build`'s
    report = check_bundle(bundle)
    assert report.ok, report.problems
    (bundle / "deepstream/nvinfer.onnx_b1_gpu0_fp16.engine").write_bytes(b"another")
    assert check_bundle(bundle).problems == [
        "deepstream/nvinfer.onnx_b1_gpu0_fp16.engine is in the bundle but not in the manifest"
    ]


@pytest.mark.parametrize(
    "edit",
    [
        ("gpu-id=0", "gpu-id=0\nenable-dla=0\ntensor-meta-pool-size=8\noutput-tensor-meta=1\ninterval=0"),
        ("batch-size=1", "batch-size=4"),
        ("gie-unique-id=1", "gie-unique-id=3"),
        ("segmentation-threshold=0.125", "segmentation-threshold=0"),
        ("scaling-filter=1", "scaling-filter=0"),
    ],
)
def test_check_accepts_valid_settings(copy_of, edit):
    bundle = copy_of("fp16_probs")
    edit_text(bundle / CONFIG, *edit)
    if edit[1] == "batch-size=4":  # nvinfer then names its engine after the new batch size
        edit_text(bundle / CONFIG, "_b1_gpu0", "_b4_gpu0")
    rehash(bundle)
    report = check_bundle(bundle)
    assert report.ok, report.problems


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (("network-mode=2", "network-mode=2 # FP16"), "inline comment"),
        (("network-mode=2", "network-mode=3"), "network-mode=3 is not 0 (FP32), 1 (INT8) or 2 (FP16)"),
        (("network-mode=2", "network-mode=0"), "network-mode=0 but the model is fp16"),
        (("model-color-format=0", "model-color-format=1"), "model-color-format=1 but the model takes rgb"),
        (("output-blob-names=scores", "output-blob-names=logits"), "are not outputs of its ONNX"),
        (("num-detected-classes=4", "num-detected-classes=21"), "num-detected-classes=21 but the model has 4"),
        (("infer-dims=3;32;40", "infer-dims=3;32"), "infer-dims has 2 values"),
        (("infer-dims=3;32;40", "infer-dims=3;1;40"), "infer-dims height 1 is not a size the model takes"),
        (("offsets=0;0;0", "offsets=127.5;102;76.5"), "normalizes inside and takes 0..255 pixels"),
        (("net-scale-factor=1", "net-scale-factor=0.0174"), "normalizes inside and takes 0..255 pixels"),
        (("segmentation-threshold=0.125", "segmentation-threshold=-1"), "segmentation-threshold=-1"),
        (("segmentation-threshold=0.125", "segmentation-threshold=0.3"), "it must lie in [0, 0.25)"),
        (("onnx-file=nvinfer.onnx", "onnx-file=../../model.onnx"), "onnx-file=../../model.onnx is not the bundle's"),
        (("model-engine-file=nvinfer.onnx_b1_gpu0_fp16.engine", "model-engine-file=x.engine"), "is neither"),
        (("[property]", "[properties]"), "has no [property] group"),
        (("gpu-id=0", "gpu-id=0\nbatch-size=4"), "key 'batch-size' appears twice"),
        (("gpu-id=0", "gpu-id=0\nmodel-flie=x"), "unknown Gst-nvinfer key(s) model-flie"),
        (("gpu-id=0", "gpu-id=0\nparse-segmentation-func-name=f"), "unknown Gst-nvinfer key(s) parse-segmentation"),
        (("gpu-id=0", "gpu-id=0\ncustom-lib-path=../labels.txt"), "custom-lib-path is set"),
        (("maintain-aspect-ratio=0", "maintain-aspect-ratio=1"), "maintain-aspect-ratio=1: must be 0"),
        (("network-type=2", "network-type=1"), "network-type=1, expected 2"),
    ],
)
def test_deepstream_check_names_bad_keys_values_and_syntax(copy_of, edit, fragment):
    bundle = copy_of("fp16_probs")
    edit_text(bundle / CONFIG, *edit)
    rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and fragment in problems[0], problems


def test_the_simulation_catches_a_deepstream_onnx_that_gives_another_class_map(copy_of):
    bundle = copy_of("logits")
    model = onnx.load(bundle / "deepstream/nvinfer.onnx")
    std = next(t for t in model.graph.initializer if t.name == "segdeploy_ds_std")
    values = onnx.numpy_helper.to_array(std).copy()
    values[0, 0] = 0.25  # red divided by one std for all channels: the approximation nvinfer users make
    std.CopyFrom(onnx.numpy_helper.from_array(values, std.name))
    onnx.save(model, bundle / "deepstream/nvinfer.onnx")
    rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and "nvinfer.onnx's scores are not the model's" in problems[0], problems


def test_a_manifest_that_names_the_wrong_deepstream_mode_is_refused(copy_of):
    bundle = copy_of("logits")
    manifest = manifest_of(bundle)
    manifest["deepstream"].update(mode="direct", onnx=None)
    (bundle / "segdeploy.json").write_text(json.dumps(manifest))
    assert check_bundle(bundle).problems[0] == "segdeploy.json: deepstream.mode is direct, expected derived"


# --------------------------------------------------------------------------- with a plan nvinfer can feed as it is
def test_a_plan_nvinfer_can_feed_is_named_in_a_direct_config(onnx_files, tmp_path):
    engine = fake_engine_for(onnx_files["fp16_probs"], tmp_path)
    bundle = write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=engine, name="seg")
    props = _props(bundle)
    assert props["onnx-file"] == "../model.onnx" and props["model-engine-file"] == "../model.plan"
    assert props["batch-size"] == "4" and props["infer-dims"] == "3;32;40"  # the profile's max batch and opt size
    assert float(props["net-scale-factor"]) == pytest.approx(1 / (255 * 0.25))
    assert props["offsets"] == "127.5;102;76.5" and props["output-blob-names"] == "probs"
    assert not (bundle / "deepstream/nvinfer.onnx").exists()
    assert "model.onnx_b4_gpu0_fp16.engine" in (bundle / "README.md").read_text()  # the rebuild, documented
    (bundle / "model.onnx_b4_gpu0_fp16.engine").write_bytes(b"nvinfer's rebuild")
    report = check_bundle(bundle)
    assert report.ok, report.problems
    edit_text(bundle / CONFIG, "model-engine-file=../model.plan", "model-engine-file=../model.onnx_b4_gpu0_fp16.engine")
    rehash(bundle)
    assert check_bundle(bundle).ok
