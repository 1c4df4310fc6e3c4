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
