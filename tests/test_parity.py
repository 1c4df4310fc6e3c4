"""Verification in both directions, on weights that behave like trained ones: correct files pass, wrong ones fail.

Wrong files are made the way exports go wrong in practice: classifier weights off by 1%, the final
Resize switched to align_corners, and the stock exporter's dynamic PSPNet (adaptive pooling baked at
the traced size). Each must fail verification with exit code 4; the correct exports of the same
models (segdeploy's, and the stock exporter's where it is right) must pass.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import calibrate_batchnorm
from onnx import numpy_helper
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.data import make_shapes, train_tiny
from segdeploy.models import create_model, model_info
from segdeploy.pipeline import ModelSpec, export_onnx
from segdeploy.verify import verification_shapes, verify

SHAPE = (1, 3, 64, 64)
SHAPES = verification_shapes(SHAPE, min_size=32)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=5, **model_info(name).test_config)
    return calibrate_batchnorm(model, (4, 3, 64, 64))


class _Exports(dict):
    """name -> (path, weights, model, result), exported on first use (PSPNet only in the heavy tier)."""

    def __init__(self, root) -> None:
        super().__init__()
        self.root = root

    def __missing__(self, name: str):
        model = _model(name)
        weights = self.root / f"{name}.pt"
        torch.save(model.state_dict(), weights)
        path = self.root / f"{name}.onnx"
        result = export_onnx(
            name,
            path,
            input_shape=SHAPE,
            spec=ModelSpec(num_classes=5, weights=weights, config=model_info(name).test_config),
        )
        self[name] = (path, weights, model, result)
        return self[name]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Calibrated PSPNet and DeepLabV3 (the deep ones whose float32 noise a fixed threshold misjudged), exported."""
    return _Exports(tmp_path_factory.mktemp("parity"))


def _tampered(path, out, edit) -> str:
    proto = onnx.load(str(path))
    edit(proto)
    onnx.save(proto, str(out))
    return str(out)


def _scale_classifier(proto: onnx.ModelProto, factor: float = 1.01) -> None:
    """Scale the weights of the last convolution (the classifier) by ``factor``."""
    last_conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    for init in proto.graph.initializer:
        if init.name in last_conv.input[1:]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), init.name))


def _align_corners(proto: onnx.ModelProto) -> None:
    last_resize = [n for n in proto.graph.node if n.op_type == "Resize"][-1]
    for attr in last_resize.attribute:
        if attr.name == "coordinate_transformation_mode":
            attr.s = b"align_corners"
            return
    last_resize.attribute.append(onnx.helper.make_attribute("coordinate_transformation_mode", "align_corners"))


@pytest.mark.parametrize("name", [pytest.param("pspnet", marks=pytest.mark.slow), "deeplabv3"])
def test_correct_exports_of_deep_models_pass_within_their_noise_floor(exported, name):
    _, _, _, result = exported[name]
    report = result.verification
    assert report.passed, report.worst()
    floors = [r for r in report.results if r.criterion == "noise-floor"]
    assert floors and all(0 < r.ratio <= report.criteria.noise_multiple for r in floors)


@pytest.mark.parametrize("name", [pytest.param("pspnet", marks=pytest.mark.slow), "deeplabv3"])
@pytest.mark.parametrize("edit", [_scale_classifier, _align_corners], ids=["classifier x1.01", "align_corners"])
def test_wrong_files_fail_verification_with_exit_4(exported, tmp_path, name, edit):
    path, weights, _, _ = exported[name]
    bad = _tampered(path, tmp_path / f"{name}-bad.onnx", edit)
    result = CliRunner().invoke(app, ["verify", bad, "--weights", str(weights)])
    assert result.exit_code == 4, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "noise floor" in errors[0] and "Traceback" not in result.output


@pytest.mark.slow
def test_stock_dynamic_pspnet_fails_and_segdeploys_passes_at_the_same_shapes(exported, tmp_path):
    _, _, model, _ = exported["pspnet"]
    stock = tmp_path / "stock.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(2, 3, 64, 64),), str(stock), dynamo=True, input_names=["input"],
            output_names=["logits"], dynamic_shapes=({0: "batch", 2: "height", 3: "width"},), verbose=False,
        )  # fmt: skip
    report = verify(stock, model, shapes=SHAPES)
    assert report.results[0].passed  # right at the traced size...
    assert not report.passed  # ...silently wrong (or broken) at the others
    ours = verify(exported["pspnet"][0], model, shapes=SHAPES)
    assert ours.passed, ours.worst()


class _TinyPyramid(torch.nn.Module):
    """PSPNet's pyramid pooling at test width: adaptive average pools to 1, 2, 3 and 6 bins, upsampled, fused."""

    def __init__(self, width: int = 8, num_classes: int = 5) -> None:
        super().__init__()
        nn = torch.nn
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.pools = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(width, 4, 1)) for b in (1, 2, 3, 6))
        self.head = nn.Conv2d(width + 16, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        up = [F.interpolate(pool(f), size=f.shape[-2:], mode="bilinear", align_corners=False) for pool in self.pools]
        return F.interpolate(self.head(torch.cat([f, *up], 1)), size=x.shape[-2:], mode="bilinear")


@pytest.mark.slow  # the stock exporter's own capture takes most of a quick tier's minute
def test_stock_dynamic_pyramid_pooling_fails_and_segdeploys_passes_at_the_same_shapes(tmp_path):
    torch.manual_seed(0)
    model = calibrate_batchnorm(_TinyPyramid(), (4, 3, 64, 64))
    stock = tmp_path / "stock.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(2, 3, 64, 64),), str(stock), dynamo=True, input_names=["input"],
            output_names=["logits"], dynamic_shapes=({0: "batch", 2: "height", 3: "width"},), verbose=False,
        )  # fmt: skip
    report = verify(stock, model, shapes=SHAPES)
    assert report.results[0].passed  # right at the traced size...
    assert not report.passed  # ...silently wrong (or broken) at the others
    export_onnx(model, tmp_path / "ours.onnx", input_shape=SHAPE, verify=False)
    ours = verify(tmp_path / "ours.onnx", model, shapes=SHAPES)
    assert ours.passed, ours.worst()


def test_a_correct_stock_export_passes_too(tmp_path):
    # the criterion judges the file, not who wrote it: the stock exporter is right for U-Net
    model = _model("unet")
    stock = tmp_path / "unet.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.randn(2, 3, 64, 64),),
            str(stock),
            dynamo=True,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: "b", 2: "h", 3: "w"},),
            verbose=False,
        )
    report = verify(stock, model, shapes=SHAPES)
    assert report.passed, report.worst()


@pytest.fixture(scope="module")
def trained_segnet(tmp_path_factory):
    """SegNet (index unpooling) trained for a few seconds on the shapes data, exported."""
    torch.manual_seed(0)
    model = create_model("segnet", num_classes=4, **model_info("segnet").test_config)
    images, labels = make_shapes(32, size=(64, 64), num_classes=4, seed=0)
    train_tiny(model, images, labels, steps=40, seconds=20)
    path = tmp_path_factory.mktemp("segnet") / "segnet.onnx"
    return model, path, export_onnx(model, path, input_shape=SHAPE)


def test_trained_segnet_passes_with_the_reference_following_its_window_choices(trained_segnet):
    _, _, result = trained_segnet
    report = result.verification
    assert report.passed, report.worst()
    floors = [r for r in report.results if r.criterion == "noise-floor"]
    assert floors and all(
        r.windows_flipped is not None and r.pool_ratio <= report.criteria.noise_multiple for r in floors
    )


def test_trained_segnet_with_a_scaled_classifier_fails(trained_segnet, tmp_path):
    model, path, _ = trained_segnet
    bad = _tampered(path, tmp_path / "bad.onnx", _scale_classifier)
    report = verify(bad, model, shapes=SHAPES)
    assert not report.passed and all(r.ratio > 10 for r in report.results)
