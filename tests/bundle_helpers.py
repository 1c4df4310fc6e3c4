"""Shared pieces of the bundle tests: tiny calibrated models exported once per session, their bundles, and
helpers that edit a bundle the way a person would.

The exports and bundles are cached by the session's temporary root, so each test module's fixtures (which
import these) reuse one set of files.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from helpers import calibrate_batchnorm
from torch import nn
from typer.testing import CliRunner

from segdeploy.bundle import write_bundle
from segdeploy.bundle.layout import file_hashes
from segdeploy.bundle.manifest import dumps
from segdeploy.cli import app
from segdeploy.errors import MissingDependencyError
from segdeploy.pipeline import IOFormat

runner = CliRunner()
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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
    "u8_classmap": (
        3,
        4,
        (1, 3, 27, 41),
        {"io": IOFormat(input_format="uint8-nhwc", color="bgr", output_kind="classmap")},
    ),
    # FP16 with probabilities and one std for all channels
    "fp16_probs": (
        3,
        4,
        (2, 3, 32, 40),
        {"precision": "fp16", "io": IOFormat(output_kind="probs", mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25))},
    ),
    # the plain export: float32 in, ImageNet normalization (per-channel std) by the caller, logits out
    "logits": (3, 4, (1, 3, 24, 32), {}),
    # one gray channel, one class, fixed shape
    "gray_probs": (
        1,
        1,
        (2, 1, 20, 28),
        {"io": IOFormat(output_kind="probs", mean=(0.5,), std=(0.2,)), "dynamic": False},
    ),
}


def tiny_net(name: str) -> nn.Module:
    """The calibrated PyTorch network behind a flavour (the same weights every call)."""
    channels, classes, _, _ = FLAVOURS[name]
    torch.manual_seed(0)
    return calibrate_batchnorm(TinySeg(channels, classes), (2, channels, 24, 24))


@functools.cache
def _exports(base: Path) -> dict[str, Path]:
    from segdeploy.pipeline import export_onnx

    directory = base / "bundle_models"
    directory.mkdir()
    files = {}
    for name, (_, _, shape, options) in FLAVOURS.items():
        files[name] = directory / f"{name}.onnx"
        export_onnx(tiny_net(name), files[name], input_shape=shape, opset=17, **options)
    return files


@functools.cache
def _bundles(base: Path) -> dict[str, Path]:
    root = base / "bundles"
    root.mkdir()
    return {name: write_bundle(path, root / name) for name, path in _exports(base).items()}


def exports_for(tmp_path_factory) -> dict[str, Path]:
    """The flavours' ONNX files, exported once per session (each test module's fixture calls this)."""
    return _exports(tmp_path_factory.getbasetemp())


def bundles_for(tmp_path_factory) -> dict[str, Path]:
    """The flavours' bundles, written once per session."""
    return _bundles(tmp_path_factory.getbasetemp())


def copy_maker(bundles: dict[str, Path], tmp_path: Path):
    """A function copying one bundle into ``tmp_path`` for a test that damages it."""

    def copy(name: str) -> Path:
        return Path(shutil.copytree(bundles[name], tmp_path / name))

    return copy


def triton_schema_installed() -> bool:
    from segdeploy.bundle import triton

    try:
        triton.model_config_module()
    except MissingDependencyError:
        return False
    return True


needs_triton = pytest.mark.skipif(
    not triton_schema_installed(),
    reason="Triton's ModelConfig schema is not installed (pip install 'segdeploy[triton]')",
)


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "segdeploy.json").read_text())


def rehash(bundle: Path) -> None:
    """Make the manifest's file list true again, as someone editing a bundle by hand would."""
    manifest = manifest_of(bundle)
    manifest["files"] = file_hashes(bundle)
    (bundle / "segdeploy.json").write_text(dumps(manifest))


def edit_manifest(bundle: Path, edit) -> None:
    manifest = manifest_of(bundle)
    edit(manifest)
    (bundle / "segdeploy.json").write_text(dumps(manifest))


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new, 1))


def invoke(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def one_error_line(output: str, *needles: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def listing(directory: Path) -> list[str]:
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*"))


def fake_engine_for(onnx_path: Path, directory: Path, **overrides) -> Path:
    """Plan bytes and the sidecar `segdeploy build` writes beside them (made with its own functions)."""
    import onnx

    from segdeploy.fileio import sha256_file
    from segdeploy.runtime.trt_build import derive_profile, make_sidecar, plan_build

    engine = directory / "fp16_probs.engine"
    engine.write_bytes(b"\x00fake TensorRT plan bytes" * 40)
    metadata = {p.key: p.value for p in onnx.load(onnx_path).metadata_props}
    shapes = {"min_shape": "1x3x32x32", "opt_shape": "2x3x32x40", "max_shape": "4x3x64x64", **overrides}
    sidecar = make_sidecar(
        plan=plan_build(10, "fp16", None),
        profile=derive_profile(metadata, **shapes),
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
    sidecar.write(engine)
    return engine


# --------------------------------------------------------------------------- hand edits of a Triton config
class TritonEdit(NamedTuple):
    """A hand edit of ``triton/FLAVOUR/config.pbtxt`` (``old`` replaced once by ``new``) that Triton accepts."""

    label: str
    old: str
    new: str
    flavour: str = "fp16_probs"


class TritonRefusal(NamedTuple):
    """A hand edit the check refuses; its first problem contains ``fragment``.

    ``at_poll``: Triton itself refuses it when it reads the repository (text proto, config validation,
    version policy). False: it passes that and is left to the backend (tensors against the ONNX, warmup
    samples) or fails only at request time; the real server here cannot confirm those.
    """

    label: str
    old: str
    new: str
    fragment: str
    at_poll: bool
    flavour: str = "fp16_probs"


_MBS, _DYN = "max_batch_size: 8", "dynamic_batching { }"
_IN = "data_type: TYPE_FP32\n    dims: [ 3"  # inside the input entry of fp16_probs
_GRAY_IN = "data_type: TYPE_FP32\n    dims: [ 2, 1"  # of gray_probs (fixed batch)


def _add(text: str, anchor: str = _MBS) -> tuple[str, str]:
    """An edit adding a line after ``anchor``."""
    return anchor, f"{anchor}\n{text}"


def _dyn(settings: str) -> tuple[str, str]:
    """An edit giving ``dynamic_batching`` these settings."""
    return _DYN, f"dynamic_batching {{ {settings} }}"


def _field(text: str, anchor: str = _IN) -> tuple[str, str]:
    """An edit adding a field to the input entry, before its dims."""
    return anchor, anchor.replace("\n    dims", f"\n    {text}\n    dims")


def _warmup(batch: int, dtype: str, dims: str, data: str) -> tuple[str, str]:
    sample = f"{{ data_type: {dtype} dims: [ {dims} ] {data} }}"
    return _add(f'model_warmup [ {{ name: "w" batch_size: {batch} inputs {{ key: "input" value: {sample} }} }} ]', _DYN)


TRITON_ACCEPTS = [
    TritonEdit("platform-not-backend", 'backend: "onnxruntime"', 'platform: "onnxruntime_onnx"'),
    TritonEdit("backend-and-platform", *_add('platform: "onnxruntime_onnx"', 'backend: "onnxruntime"')),
    TritonEdit("backend-inferred-from-file", 'backend: "onnxruntime"\n', ""),
    TritonEdit("backend-from-file-name", 'backend: "onnxruntime"\n', 'default_model_filename: "model.onnx"\n'),
    TritonEdit("name-left-out", 'name: "fp16_probs"\n', ""),
    TritonEdit("version-1", *_add("version_policy: { specific: { versions: [ 1 ] } }")),
    TritonEdit("latest-1", *_add("version_policy: { latest: { num_versions: 1 } }")),
    TritonEdit("all-versions", *_add("version_policy { all { } }")),
    TritonEdit("fixed-size-the-model-takes", "dims: [ 3, -1, -1 ]", "dims: [ 3, 64, 96 ]"),
    TritonEdit("warmup", *_warmup(2, "TYPE_FP32", "3, 32, 40", "zero_data: true")),
    TritonEdit("preferred-sizes", *_dyn("max_queue_delay_microseconds: 100 preferred_batch_size: [ 4, 8 ]")),
    TritonEdit(
        "priority-levels",
        *_dyn(
            "priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 2 value: { max_queue_size: 4 } }"
        ),
    ),
    TritonEdit("preserve-ordering", *_dyn("preserve_ordering: true")),
    TritonEdit("cpu-instances", *_add("instance_group [ { kind: KIND_CPU count: 2 } ]")),
    TritonEdit("identity-reshape", *_field("reshape: { shape: [ 3, -1, -1 ] }")),
    TritonEdit("dims-one-by-one", "dims: [ 3, -1, -1 ]", "dims: 3 dims: -1 dims: -1"),
    TritonEdit("single-quotes-and-comment", 'name: "fp16_probs"\n', "name: 'fp16_probs'  # quoted\n"),
    TritonEdit("type-by-number", _IN, "data_type: 11\n    dims: [ 3"),
    TritonEdit("queue-without-batching", *_add(_DYN, "max_batch_size: 0"), "gray_probs"),
]

TRITON_REFUSES = [
    # what Triton refuses when it reads the repository
    TritonRefusal("misspelt-field", _MBS, "max_batch_sise: 8", "does not parse as a Triton ModelConfig", True),
    TritonRefusal("unknown-type", "TYPE_FP32", "TYPE_FLOAT32", "does not parse as a Triton ModelConfig", True),
    TritonRefusal("trailing-comma", "dims: [ 3, -1, -1 ]", "dims: [ 3, -1, -1, ]", "does not parse", True),
    TritonRefusal("field-twice", *_add("max_batch_size: 4"), "does not parse", True),
    TritonRefusal("name-not-directory", 'name: "fp16_probs"', 'name: "other"', "is not the directory's", True),
    TritonRefusal(
        "backend-platform-pair", *_add('platform: "tensorrt_plan"', 'backend: "onnxruntime"'), "does not serve", True
    ),
    TritonRefusal("negative-batch", _MBS, "max_batch_size: -2", "max_batch_size -2 is negative", True),
    TritonRefusal(
        "missing-version", *_add("version_policy: { specific: { versions: [ 2 ] } }"), "version(s) [2]", True
    ),
    TritonRefusal("no-version", *_add("version_policy: { specific: { versions: [ ] } }"), "version(s) (none)", True),
    TritonRefusal("latest-0", *_add("version_policy: { latest: { num_versions: 0 } }"), "serves no version", True),
    TritonRefusal("empty-dims", "dims: [ 3, -1, -1 ]", "dims: [ ]", "has rank 1", True),
    TritonRefusal("zero-dim", "dims: [ 3, -1, -1 ]", "dims: [ 3, 0, -1 ]", "dim 0 is not a size or -1", True),
    TritonRefusal("no-data-type", _IN, "dims: [ 3", "has data_type TYPE_INVALID", True),
    TritonRefusal("no-input-name", 'name: "input"\n', "", "input '' is not a model input", True),
    TritonRefusal(
        "preferred-above-max", *_dyn("preferred_batch_size: [ 16 ]"), "[16] is outside 1..max_batch_size 8", True
    ),
    TritonRefusal("preferred-zero", *_dyn("preferred_batch_size: [ 0 ]"), "[0] is outside", True),
    TritonRefusal(
        "priority-default-unset", *_dyn("priority_levels: 2"), "default_priority_level 0 is outside 1..2", True
    ),
    TritonRefusal(
        "priority-policy-level",
        *_dyn("priority_levels: 2 default_priority_level: 1 priority_queue_policy { key: 3 value: { } }"),
        "priority_queue_policy names level(s) [3]",
        True,
    ),
    TritonRefusal(
        "ordering-with-priorities",
        *_dyn("priority_levels: 2 default_priority_level: 1 preserve_ordering: true"),
        "preserve_ordering allows one priority level",
        True,
    ),
    TritonRefusal(
        "ordering-with-delay",
        *_dyn("preserve_ordering: true default_queue_policy { timeout_action: DELAY default_timeout_microseconds: 9 }"),
        "no DELAY timeout action",
        True,
    ),
    TritonRefusal(
        "cache-decoupled",
        *_add("response_cache { enable: true }\nmodel_transaction_policy { decoupled: true }"),
        "response_cache cannot serve a decoupled model",
        True,
    ),
    TritonRefusal(
        "ensemble-scheduling",
        *_add("ensemble_scheduling { }", "max_batch_size: 0"),
        "ensemble_scheduling is for ensembles",
        True,
        "gray_probs",
    ),
    TritonRefusal(
        "sequence-preferred-size",
        *_add("sequence_batching { oldest { preferred_batch_size: [ 2 ] } }", "max_batch_size: 0"),
        "sequence_batching needs a correlation ID",
        True,
        "gray_probs",
    ),
    TritonRefusal("shape-tensor", *_field("is_shape_tensor: true"), "is_shape_tensor", True),
    TritonRefusal("non-linear-io", *_field("is_non_linear_format_io: true"), "needs a TensorRT plan", True),
    TritonRefusal(
        "reshape-elements", *_field("reshape: { shape: [ 3, -1 ] }"), "reshape [3, -1] does not hold the elements", True
    ),
    TritonRefusal(
        "empty-reshape-unbatched",
        *_field("reshape: { shape: [ ] }", _GRAY_IN),
        "reshape [] does not hold the elements",
        True,
        "gray_probs",
    ),
    TritonRefusal(
        "nchw-with-4-dims", *_field("format: FORMAT_NCHW", _GRAY_IN), "FORMAT_NCHW needs 3 dims", True, "gray_probs"
    ),
    TritonRefusal(
        "batch-input-type",
        *_add(
            'batch_input [ { kind: BATCH_ELEMENT_COUNT target_name: "n" data_type: TYPE_FP16 source_input: "input" } ]'
        ),
        "batch_input/batch_output are for ragged batching",
        True,
    ),
    TritonRefusal(
        "batch-output-target",
        *_add('batch_output [ { kind: BATCH_SCATTER_WITH_INPUT_SHAPE target_name: "nope" source_input: "input" } ]'),
        "batch_input/batch_output are for ragged batching",
        True,
    ),
    # what passes Triton's poll and fails later, in the backend (the tensors against the ONNX, the warmup
    # samples) or at request time
    TritonRefusal("input-name", 'name: "input"', 'name: "image"', "input 'image' is not a model input", False),
    TritonRefusal("input-type", _IN, "data_type: TYPE_FP16\n    dims: [ 3", "data_type TYPE_FP16", False),
    TritonRefusal("unknown-type-number", _IN, "data_type: 99\n    dims: [ 3", "has data_type 99", False),
    TritonRefusal("input-rank", "dims: [ 3, -1, -1 ]", "dims: [ -1, -1 ]", "rank 3", False),
    TritonRefusal(
        "class-count", "dims: [ 4, -1, -1 ]", "dims: [ 5, -1, -1 ]", "'probs' has 5 classes, the model has 4", False
    ),
    TritonRefusal(
        "input-twice",
        "  }\n]\noutput",
        '  },\n  { name: "input" data_type: TYPE_FP32 dims: [ 3, -1, -1 ] }\n]\noutput',
        "2 inputs, the model has 1",
        False,
    ),
    TritonRefusal(
        "plan-platform-for-onnx", 'backend: "onnxruntime"', 'platform: "tensorrt_plan"', "does not serve", False
    ),
    TritonRefusal(
        "other-file-name", *_add('default_model_filename: "m.onnx"'), "default_model_filename 'm.onnx'", False
    ),
    TritonRefusal(
        "height-1", "dims: [ 3, -1, -1 ]", "dims: [ 3, 1, 1 ]", "fixes height 1, not a size the model takes", False
    ),
    TritonRefusal(
        "reshape-rank",
        *_field("reshape: { shape: [ 2, 1, 560 ] }", _GRAY_IN),
        "input reshape 'input' has rank 3",
        False,
        "gray_probs",
    ),
    TritonRefusal("ragged-batch", *_field("allow_ragged_batch: true"), "allow_ragged_batch", False),
    TritonRefusal(
        "sequence-batching", _DYN, "sequence_batching { }", "sequence_batching needs a correlation ID", False
    ),
    TritonRefusal(
        "warmup-batch",
        *_add('model_warmup [ { name: "w" batch_size: 16 } ]', _DYN),
        "batch_size 16 does not fit",
        False,
    ),
    TritonRefusal(
        "warmup-type", *_warmup(1, "TYPE_UINT8", "3, 32, 40", "zero_data: true"), "input 'input' is TYPE_UINT8", False
    ),
    TritonRefusal(
        "warmup-size",
        *_warmup(1, "TYPE_FP32", "3, 1, 40", "random_data: true"),
        "dims [3, 1, 40] are not a shape the model takes",
        False,
    ),
    TritonRefusal(
        "warmup-file",
        *_warmup(1, "TYPE_FP32", "3, 32, 40", 'input_data_file: "x.bin"'),
        "names warmup/x.bin, which is missing",
        False,
    ),
]


def edit_triton_config(copy, edit: TritonEdit | TritonRefusal) -> Path:
    """Copy the edit's bundle (``copy`` from :func:`copy_maker`), make the edit, rehash; the bundle's path."""
    bundle = copy(edit.flavour)
    edit_text(bundle / "triton" / edit.flavour / "config.pbtxt", edit.old, edit.new)
    rehash(bundle)
    return bundle
