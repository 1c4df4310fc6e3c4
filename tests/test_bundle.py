"""``segdeploy bundle``: what a bundle holds, its typed contracts and schemas, the checks that need no server,
and the engines and inputs it refuses. DeepStream, Triton and output locations have their own test files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from bundle_helpers import (
    FLAVOURS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    edit_manifest,
    fake_engine_for,
    invoke,
    listing,
    manifest_of,
    one_error_line,
    rehash,
)

from segdeploy.artifact import Metadata
from segdeploy.bundle import check_bundle, write_bundle
from segdeploy.bundle.engine import EngineFactsGiven
from segdeploy.bundle.layout import file_hashes, palette
from segdeploy.bundle.manifest import BundleManifest, ManifestError
from segdeploy.errors import UserInputError, VerificationError
from segdeploy.fileio import sha256_file
from segdeploy.frames import FramePipeline
from segdeploy.runtime.sidecar import EngineSidecar, sidecar_path
from segdeploy.schemas import ENGINE_SIDECAR_SCHEMA, MANIFEST_SCHEMA, load_schema


def _validate(data: dict, schema: str) -> None:
    jsonschema.validate(data, load_schema(schema), cls=jsonschema.Draft202012Validator)


# --------------------------------------------------------------------------- contents
def test_bundle_holds_the_files_of_its_layout(bundles):
    assert listing(bundles["u8_classmap"]) == [
        "README.md",
        "client.py",
        "deepstream",
        "deepstream/config_infer_primary.txt",
        "deepstream/nvinfer.onnx",
        "golden",
        "golden/frames.npy",
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


def test_manifest_keeps_the_version_1_fields_and_describes_a_uint8_bgr_classmap_file(bundles, onnx_files):
    bundle = bundles["u8_classmap"]
    manifest = manifest_of(bundle)
    assert manifest["schema_version"] == 2 and manifest["name"] == "u8_classmap"
    assert manifest["num_classes"] == 4 and manifest["labels"] == ["class_0", "class_1", "class_2", "class_3"]
    assert manifest["palette"] == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert manifest["precision"] == "fp32" and manifest["opset"] == 17 and manifest["engine"] is None
    spec = manifest["input"]
    assert (spec["dtype"], spec["layout"], spec["color"], spec["normalization_fused"]) == ("uint8", "NHWC", "bgr", True)
    assert spec["shape"] == [1, 27, 41, 3] and spec["dynamic_axes"] == ["batch", "height", "width"]
    np.testing.assert_allclose(spec["mean"], IMAGENET_MEAN[::-1])  # in the order of the input's channels (B, G, R)
    np.testing.assert_allclose(spec["std"], IMAGENET_STD[::-1])
    assert manifest["output"] == {"name": "classmap", "kind": "classmap", "dtype": "int32", "layout": "NHW"}
    assert manifest["golden"] == {
        "input": "golden/input.npy",
        "output": "golden/output.npy",
        "frames": "golden/frames.npy",
    }
    assert manifest["files"] == file_hashes(bundle) and "segdeploy.json" not in manifest["files"]
    assert (bundle / "model.onnx").read_bytes() == onnx_files["u8_classmap"].read_bytes()
    assert (bundle / "labels.txt").read_text() == "class_0\nclass_1\nclass_2\nclass_3\n"


def test_manifest_carries_the_files_pipeline_and_provenance(bundles, onnx_files):
    manifest = manifest_of(bundles["logits"])
    metadata = onnx.load(onnx_files["logits"])
    props = {p.key: p.value for p in metadata.metadata_props}
    parsed = Metadata.from_props(props)
    assert manifest["pipeline"] == FramePipeline.from_metadata(parsed).to_dict()
    prov = manifest["provenance"]
    assert prov["model_sha256"] == sha256_file(onnx_files["logits"]) == manifest["files"]["model.onnx"]
    assert prov["architecture"] == props["architecture"] == "TinySeg" and prov["source"] == "object"
    assert (prov["torch_version"], prov["segdeploy_version"]) == (parsed.torch_version, parsed.segdeploy_version)
    assert prov["init_seed"] == parsed.init_seed and prov["config"] == parsed.config
    assert prov["onnx_version"] == onnx.__version__ and prov["onnx_ir_version"] == metadata.ir_version
    assert prov["weights"] is None and prov["weights_sha256"] is None


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_written_manifests_validate_against_the_schema_and_round_trip(bundles, name):
    data = manifest_of(bundles[name])
    _validate(data, MANIFEST_SCHEMA)
    manifest = BundleManifest.from_dict(data)
    assert manifest.to_dict() == data
    assert manifest == BundleManifest.read(bundles[name])


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda m: m.pop("pipeline"), "'pipeline' is missing"),
        (lambda m: m["input"].update(dtype="int16"), "'input.dtype'"),
        (lambda m: m["output"].update(kind="masks"), "'output.kind' is 'masks'"),
        (lambda m: m["input"].update(normalization_fused=False), "'input.normalization_fused' contradicts"),
        (lambda m: m.update(schema_version=1), "this segdeploy reads 2 (bundle the ONNX again"),
        (lambda m: m["provenance"].pop("model_sha256"), "'provenance.model_sha256'"),
        (lambda m: m["engine"] if False else m.update(engine={"file": "model.plan"}), "'engine.tensorrt_version'"),
        (lambda m: m["golden"].update(frames="../frames.npy"), "leaves the bundle"),
    ],
)
def test_the_manifest_reader_and_the_schema_both_refuse_a_broken_manifest(bundles, edit, fragment):
    data = manifest_of(bundles["u8_classmap"])
    edit(data)
    with pytest.raises(ManifestError, match=re.escape(fragment)):
        BundleManifest.from_dict(data)
    with pytest.raises(jsonschema.ValidationError):
        _validate(data, MANIFEST_SCHEMA)


def test_the_manifest_reader_refuses_what_the_schema_cannot_relate(bundles):
    data = manifest_of(bundles["u8_classmap"])
    data["labels"].pop()  # 3 labels for 4 classes: a JSON Schema cannot compare the two
    with pytest.raises(ManifestError, match="'labels' must be 4 non-empty strings"):
        BundleManifest.from_dict(data)


def test_golden_pair_is_the_pipelines_input_of_the_frames_and_onnxruntimes_output(bundles):
    for name, bundle in bundles.items():
        manifest = BundleManifest.read(bundle)
        frames, x, y = (np.load(bundle / f"golden/{f}.npy") for f in ("frames", "input", "output"))
        assert frames.dtype == np.uint8 and frames.shape[-1] == manifest.input.channels, name
        assert (
            list(x.shape) == list(manifest.input.shape[:1]) + list(x.shape[1:]) and x.dtype.name == manifest.input.dtype
        )
        np.testing.assert_array_equal(manifest.pipeline.to_input(list(frames)), x)
        session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"input": x})[0], y)
    assert np.load(bundles["u8_classmap"] / "golden/frames.npy").std() > 20  # an image with content
    assert len(np.unique(np.load(bundles["u8_classmap"] / "golden/output.npy"))) > 1  # more than one class


def test_palette_is_fixed_distinct_and_has_two_colors_for_one_class(bundles):
    assert palette(256)[:4] == [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    assert len(set(palette(256))) == 256
    manifest = manifest_of(bundles["gray_probs"])
    assert manifest["num_classes"] == 1 and manifest["palette"] == [[0, 0, 0], [128, 0, 0]]


def test_readme_says_what_each_file_is_and_loads_triton_models_explicitly(bundles):
    text = (bundles["fp16_probs"] / "README.md").read_text()
    for needle in (
        "segdeploy.json",
        "golden/frames.npy",
        "triton/fp16_probs/",
        "config_infer_primary.txt",
        "nvinfer.onnx",
        "segdeploy_infer",
        "--model-control-mode=explicit --load-model=fp16_probs",
        "client.py",
        "--check",
    ):
        assert needle in text, needle


# --------------------------------------------------------------------------- checks pass
@pytest.mark.parametrize("name", list(FLAVOURS))
def test_check_passes_on_fresh_bundles(bundles, name):
    report = check_bundle(bundles[name])
    assert report.ok, report.problems
    assert {r.name for r in report.results} == {"manifest", "files", "model", "golden", f"triton {name}", "deepstream"}
    assert all(r.status == "ok" for r in report.results if not r.name.startswith("triton"))


def test_cli_check_exits_0_and_lists_the_checks(bundles):
    code, output = invoke("bundle", "--check", bundles["fp16_probs"])
    assert code == 0, output
    assert "bundle OK" in output and "golden" in output and "deepstream" in output


# --------------------------------------------------------------------------- checks fail
def test_check_fails_on_an_edited_model_file(copy_of):
    bundle = copy_of("u8_classmap")
    model = onnx.load(bundle / "model.onnx")
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.raw_data) > 64)
    data = bytearray(weight.raw_data)
    data[:4] = np.float32(7.0).tobytes()
    weight.raw_data = bytes(data)
    onnx.save(model, bundle / "model.onnx")
    code, output = invoke("bundle", "--check", bundle)
    assert code == 4
    one_error_line(output, "model.onnx differs from the manifest's sha256")
    rehash(bundle)  # hashes made true again: the provenance and the golden output still tell
    problems = check_bundle(bundle).problems
    assert any("provenance.model_sha256" in p for p in problems), problems
    assert any("does not reproduce golden/output.npy" in p for p in problems), problems


@pytest.mark.parametrize("missing", ["golden/output.npy", "golden/input.npy", "golden/frames.npy"])
def test_check_fails_on_a_missing_golden_file(copy_of, missing):
    bundle = copy_of("logits")
    (bundle / missing).unlink()
    code, output = invoke("bundle", "--check", bundle)
    assert code == 4
    one_error_line(output, f"{missing} is listed in the manifest but missing")


def test_check_fails_when_the_golden_input_is_not_what_the_pipeline_makes(copy_of):
    bundle = copy_of("logits")
    frames = np.load(bundle / "golden/frames.npy")
    np.save(bundle / "golden/frames.npy", frames[:, ::-1].copy())
    rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems[0] == "golden/input.npy is not what the manifest's pipeline makes of golden/frames.npy", problems


def test_check_fails_on_extra_and_unlisted_files_and_a_bad_manifest(copy_of, tmp_path):
    bundle = copy_of("logits")
    (bundle / "notes.txt").write_text("hello")
    assert check_bundle(bundle).problems == ["notes.txt is in the bundle but not in the manifest"]
    (bundle / "segdeploy.json").write_text('{"schema_version": 2, "input": ')
    code, output = invoke("bundle", "--check", bundle)
    assert code == 4
    one_error_line(output, "segdeploy.json is not valid JSON")
    code, output = invoke("bundle", "--check", tmp_path)
    assert code == 2
    one_error_line(output, "no segdeploy.json: not a segdeploy bundle")


@pytest.mark.parametrize("what", ["model.onnx", "labels.txt", "segdeploy.json", "golden", "fifo"])
def test_check_refuses_links_and_special_files_that_do_not_travel(copy_of, tmp_path, what):
    bundle = copy_of("logits")
    outside = tmp_path / "outside"
    outside.mkdir()
    if what == "fifo":
        os.mkfifo(bundle / "pipe")
        expected = "pipe is a link or special file"
    elif what == "golden":  # a linked directory: its files look right through the link
        shutil.move(bundle / "golden", outside / "golden")
        (bundle / "golden").symlink_to(outside / "golden")
        expected = "golden is a link or special file"
    else:
        shutil.move(bundle / what, outside / what)
        (bundle / what).symlink_to(outside / what)
        expected = f"{what} is " + ("not a regular file" if what == "segdeploy.json" else "a link or special file")
    code, output = invoke("bundle", "--check", bundle)
    assert code == 4
    one_error_line(output, expected)


def test_check_fails_when_the_manifest_disagrees_with_the_model(copy_of):
    bundle = copy_of("u8_classmap")
    edit_manifest(bundle, lambda m: m["input"].update(color="rgb"))
    problems = check_bundle(bundle).problems
    assert problems[0] == "segdeploy.json: input.color is 'rgb', model.onnx says 'bgr'", problems
    with pytest.raises(VerificationError, match="input.color"):
        check_bundle(bundle).raise_for_problems()
    bundle = copy_of("logits")
    edit_manifest(bundle, lambda m: m["pipeline"]["normalize"].update(mean=[0.5, 0.5, 0.5]))
    assert check_bundle(bundle).problems[0] == "segdeploy.json: pipeline.normalize is not what model.onnx describes"


# --------------------------------------------------------------------------- TensorRT engine (fake plan bytes)
@pytest.fixture
def fake_engine(onnx_files, tmp_path) -> Path:
    return fake_engine_for(onnx_files["fp16_probs"], tmp_path)


def test_sidecars_validate_against_their_schema_and_round_trip(fake_engine):
    data = json.loads(sidecar_path(fake_engine).read_text())
    _validate(data, ENGINE_SIDECAR_SCHEMA)
    sidecar = EngineSidecar.read(fake_engine)
    assert sidecar is not None and sidecar.to_dict() == data
    for key in ("engine_sha256", "profile", "onnx"):
        broken = {k: v for k, v in data.items() if k != key}
        with pytest.raises(UserInputError, match=f"'{key}"):
            EngineSidecar.from_dict(broken, where="x.json")
        with pytest.raises(jsonschema.ValidationError):
            _validate(broken, ENGINE_SIDECAR_SCHEMA)


def test_engine_bundle_has_the_raw_plan_its_facts_and_a_tensorrt_triton_model(onnx_files, fake_engine, tmp_path):
    bundle = write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine, name="seg")
    assert (bundle / "model.plan").read_bytes() == fake_engine.read_bytes()  # nothing prepended
    assert (bundle / "triton/seg_trt/1/model.plan").read_bytes() == fake_engine.read_bytes()
    manifest = manifest_of(bundle)
    _validate(manifest, MANIFEST_SCHEMA)
    assert manifest["engine"] == {
        "file": "model.plan",
        "tensorrt_version": "10.3.0.30",
        "gpu_name": "Orin (nvgpu)",
        "compute_capability": "8.7",
        "precision": "fp16",
        "facts": "sidecar",
    }
    assert manifest["input"]["tensorrt_profile"] == {
        "min": [1, 3, 32, 32],
        "opt": [2, 3, 32, 40],
        "max": [4, 3, 64, 64],
    }
    trt_config = (bundle / "triton/seg_trt/config.pbtxt").read_text()
    assert 'platform: "tensorrt_plan"' in trt_config and "max_batch_size: 4" in trt_config
    assert "max_batch_size: 4" in (bundle / "triton/seg/config.pbtxt").read_text()  # the profile bounds the batch
    assert "TensorRT 10.3.0.30" in (bundle / "README.md").read_text()
    report = check_bundle(bundle)
    assert report.ok, report.problems
    assert {r.name for r in report.results} >= {"triton seg", "triton seg_trt"}


def test_engine_without_a_sidecar_is_refused_with_both_ways_out_and_nothing_written(onnx_files, fake_engine, tmp_path):
    sidecar_path(fake_engine).unlink()
    code, output = invoke("bundle", onnx_files["fp16_probs"], "--engine", fake_engine, "-o", tmp_path / "b")
    assert code == 2
    one_error_line(output, "has no sidecar", "segdeploy build", "--trt-version", "--compute-capability")
    assert listing(tmp_path) == ["fp16_probs.engine"]


def test_an_engine_from_elsewhere_bundles_with_its_facts_given_explicitly(onnx_files, fake_engine, tmp_path):
    sidecar_path(fake_engine).unlink()
    args = ("--engine", fake_engine, "--trt-version", "10.3.0.30", "--compute-capability", "8.7")
    shapes = ("--min-shape", "1x3x32x32", "--opt-shape", "2x3x32x40", "--max-shape", "4x3x64x64")
    code, output = invoke("bundle", onnx_files["fp16_probs"], "-o", tmp_path / "b", *args)
    assert code == 2
    one_error_line(output, "dynamic axes", "--min-shape, --opt-shape and --max-shape")
    code, output = invoke("bundle", onnx_files["fp16_probs"], "-o", tmp_path / "b", *args, *shapes)
    assert code == 0, output
    manifest = manifest_of(tmp_path / "b")
    assert manifest["engine"]["facts"] == "command-line" and manifest["engine"]["precision"] == "fp16"
    assert check_bundle(tmp_path / "b").ok


@pytest.mark.parametrize(
    ("shapes", "fragment"),
    [
        ({"min_shape": "1x3x1x1"}, "height and width of at least 2"),  # min_size is 2
        ({"opt_shape": "2x1x32x40", "min_shape": "1x1x32x32", "max_shape": "4x1x64x64"}, "does not fit the ONNX"),
        ({"min_shape": "4x3x32x32", "opt_shape": "2x3x32x40"}, "does not fit the ONNX"),
    ],
)
def test_an_engine_profile_that_contradicts_the_onnx_is_refused(onnx_files, tmp_path, shapes, fragment):
    given = {"min_shape": "1x3x32x32", "opt_shape": "2x3x32x40", "max_shape": "4x3x64x64", **shapes}
    engine = tmp_path / "e.plan"
    engine.write_bytes(b"plan" * 100)
    facts = EngineFactsGiven("10.3.0.30", "8.7", given["min_shape"], given["opt_shape"], given["max_shape"])
    with pytest.raises(UserInputError, match=re.escape(fragment)):
        write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=engine, engine_facts=facts)
    assert not (tmp_path / "b").exists()


def test_a_sidecar_profile_that_contradicts_a_static_onnx_is_refused(onnx_files, tmp_path):
    engine = fake_engine_for(onnx_files["fp16_probs"], tmp_path)
    side = json.loads(sidecar_path(engine).read_text())
    static = onnx_files["gray_probs"]  # fixed 2x1x20x28
    side["onnx"]["sha256"] = sha256_file(static)
    side["profile"] = {"min": [1, 1, 20, 28], "opt": [2, 1, 20, 28], "max": [4, 1, 40, 56]}
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.raises(UserInputError, match="does not fit the ONNX"):
        write_bundle(static, tmp_path / "b", engine=engine)


def test_engine_built_from_another_onnx_or_changed_since_is_refused(onnx_files, fake_engine, tmp_path):
    with pytest.raises(UserInputError, match="was built from another ONNX file"):
        write_bundle(onnx_files["logits"], tmp_path / "b", engine=fake_engine)
    fake_engine.write_bytes(b"another plan")
    with pytest.raises(UserInputError, match="not the file its sidecar describes"):
        write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine)
    side = json.loads(sidecar_path(fake_engine).read_text())
    del side["engine_sha256"]  # a hand-written sidecar without the plan's hash proves nothing
    sidecar_path(fake_engine).write_text(json.dumps(side))
    with pytest.raises(UserInputError, match="'engine_sha256' is missing"):
        write_bundle(onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine)
    assert not (tmp_path / "b").exists()


# --------------------------------------------------------------------------- bad input
def test_non_segdeploy_onnx_is_refused_naming_the_missing_metadata(onnx_files, tmp_path):
    model = onnx.load(onnx_files["logits"])
    kept = [p for p in model.metadata_props if p.key not in ("num_classes", "trace_shape")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "partial.onnx")
    code, output = invoke("bundle", tmp_path / "partial.onnx", "-o", tmp_path / "b")
    assert code == 2
    one_error_line(output, "lacks segdeploy metadata (num_classes, trace_shape missing)", "segdeploy export")
    assert not (tmp_path / "b").exists()


def test_labels_must_match_the_class_count(onnx_files, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("background\ncat\ndog\n")
    code, output = invoke("bundle", onnx_files["logits"], "--labels", labels, "-o", tmp_path / "b")
    assert code == 2
    one_error_line(output, "has 3 labels but the model has 4 classes")
    labels.write_text("background\ncat\ndog\nbird\n\n")
    bundle = write_bundle(onnx_files["logits"], tmp_path / "b", labels=labels)
    assert manifest_of(bundle)["labels"] == ["background", "cat", "dog", "bird"]


@pytest.mark.parametrize("args", [("--name", "bad name!"), ("--name", "seg_trt")])
def test_bad_names_and_argument_mixes_are_one_line(onnx_files, tmp_path, args):
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b", *args)
    assert code == 2
    one_error_line(output, "bad bundle name")
    code, output = invoke("bundle", "--check", tmp_path, "-o", tmp_path / "b")
    assert code == 2
    one_error_line(output, "drop -o")
    code, output = invoke("bundle", onnx_files["logits"])
    assert code == 2
    one_error_line(output, "-o DIR")
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b", "--trt-version", "10.3")
    assert code == 2
    one_error_line(output, "--compute-capability")


def test_default_name_comes_from_the_file_name(onnx_files, tmp_path):
    fp16 = tmp_path / "unet.fp16.onnx"
    shutil.copy(onnx_files["logits"], fp16)
    bundle = write_bundle(fp16, tmp_path / "b")
    assert manifest_of(bundle)["name"] == "unet_fp16" and (bundle / "triton/unet_fp16/config.pbtxt").is_file()
