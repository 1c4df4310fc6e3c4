"""export_onnx and `segdeploy export`: every zoo model and user modules, exact opsets, metadata, failures."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from segdeploy.errors import ExportError, UserInputError
from segdeploy.export.onnx import export_onnx, read_metadata
from segdeploy.models import list_models, model_info

FORBIDDEN_OPS = {"MaxUnpool", "ScatterND", "ArgMax", "TopK"}

USER_SEGNET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TinySegNet(nn.Module):
        def __init__(self, num_classes=4, in_channels=3):
            super().__init__()
            self.enc1 = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
            self.dec2 = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.dec1 = nn.Conv2d(8, num_classes, 3, padding=1)

        def forward(self, x):
            x1 = self.enc1(x)
            p1, i1 = F.max_pool2d(x1, 2, 2, return_indices=True)
            x2 = self.enc2(p1)
            p2, i2 = F.max_pool2d(x2, 2, 2, return_indices=True)
            u2 = F.max_unpool2d(p2, i2, 2, 2, output_size=x2.shape[-2:])
            u1 = F.max_unpool2d(self.dec2(u2), i1, 2, 2, output_size=x1.shape[-2:])
            return self.dec1(u1)

    def build(num_classes=4, in_channels=3):
        return TinySegNet(num_classes, in_channels)
    """
)

USER_PPM = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Pyramid(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(6)
            self.head = nn.Conv2d(16, num_classes, 1)

        def forward(self, x):
            f = torch.relu(self.stem(x))
            ctx = F.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear", align_corners=False)
            return self.head(torch.cat([f, ctx], 1))
    """
)


class TinyNet(nn.Module):
    """A small continuous model for the pipeline checks."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _dims(value_info: onnx.ValueInfoProto) -> list[object]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _opset(path) -> int:
    return next(e.version for e in onnx.load(str(path)).opset_import if e.domain in ("", "ai.onnx"))


def _assert_tensorrt_friendly(path) -> None:
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    assert all(len([o for o in n.output if o]) == 1 for n in proto.graph.node if n.op_type == "MaxPool")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    result = export_onnx(TinyNet(), path, input_shape=(1, 3, 32, 40), num_classes=3)
    return path, result


@pytest.mark.parametrize("name", list_models())
def test_every_zoo_model_exports_dynamic_lints_clean_and_verifies(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(name, path, input_shape=(1, 3, 64, 64), config=model_info(name).test_config)
    assert _opset(path) == 17
    assert _dims(onnx.load(str(path)).graph.input[0]) == ["batch", 3, "height", "width"]
    assert result.lint is not None and result.lint.ok, result.lint.summary()
    report = result.verification
    assert report.passed, report.worst()
    shapes = [r.shape for r in report.results]
    assert len(shapes) >= 3 and any(s[0] == 2 for s in shapes) and any(s[2] % 2 for s in shapes)
    assert set(model_info(name).rewrites) <= set(result.rewrites)
    _assert_tensorrt_friendly(path)


def test_user_segnet_with_functional_unpooling_exports_and_verifies(tmp_path):
    (tmp_path / "tiny_segnet.py").write_text(USER_SEGNET)
    path = tmp_path / "segnet.onnx"
    result = export_onnx(f"{tmp_path / 'tiny_segnet.py'}:build", path, input_shape=(1, 3, 37, 50), num_classes=4)
    assert result.rewrites == ["max_unpool"]
    assert result.verification.passed, result.verification.worst()
    assert read_metadata(path)["architecture"].endswith("tiny_segnet.py:build")
    _assert_tensorrt_friendly(path)


def test_user_adaptive_pooling_module_is_exact_where_bins_do_not_divide(tmp_path):
    from segdeploy.models.loading import load_model
    from segdeploy.verify import verify

    (tmp_path / "ppm.py").write_text(USER_PPM)
    spec, path = f"{tmp_path / 'ppm.py'}:Pyramid", tmp_path / "ppm.onnx"
    torch.manual_seed(7)
    result = export_onnx(spec, path, input_shape=(1, 3, 36, 48), num_classes=4)
    assert result.rewrites == ["adaptive_avg_pool"]
    assert result.verification.passed, result.verification.worst()
    torch.manual_seed(7)  # the same weights as the exported module
    reference = load_model(spec, num_classes=4).module
    uneven = verify(path, reference, shapes=[(1, 3, 37, 50), (2, 3, 64, 45), (1, 3, 7, 9)])
    assert uneven.passed, uneven.worst()
    assert max(r.max_rel_error for r in uneven.results) <= 1e-4


@pytest.mark.parametrize("opset", [13, 20])
def test_the_file_has_exactly_the_requested_opset(opset, tmp_path):
    path = tmp_path / f"o{opset}.onnx"
    result = export_onnx(TinyNet(), path, input_shape=(1, 3, 32, 32), opset=opset, verify=False, num_classes=3)
    assert _opset(path) == opset == result.opset
    ort.InferenceSession(str(path))  # ONNX Runtime loads the IR version written


def test_opset_17_file_runs_in_onnx_runtime_at_other_shapes(tiny_export):
    path, result = tiny_export
    assert _opset(path) == 17 and result.ir_version <= 10
    session = ort.InferenceSession(str(path))
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for shape in [(2, 3, 33, 47), (1, 3, 8, 9)]:
        out = session.run(None, {"input": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)})[0]
        assert out.shape == (shape[0], 3, shape[2], shape[3])


def test_metadata_describes_the_export(tiny_export):
    path, result = tiny_export
    meta = read_metadata(path)
    assert meta == result.metadata
    assert meta["architecture"] == "TinyNet" and meta["num_classes"] == "3" and meta["in_channels"] == "3"
    assert meta["trace_shape"] == "1x3x32x40" and meta["dynamic_axes"] == "batch,height,width"
    assert meta["opset"] == "17" and meta["precision"] == "fp32" and meta["rewrites"] == ""
    assert meta["segdeploy_version"]


@pytest.mark.parametrize("opset", [12, 21])
def test_opsets_outside_13_to_20_are_refused_with_the_range(opset, tmp_path):
    with pytest.raises(UserInputError, match="choose 13 to 20"):
        export_onnx(TinyNet(), tmp_path / "x.onnx", input_shape=(1, 3, 32, 32), opset=opset)


def test_wrong_channel_count_is_refused(tmp_path):
    with pytest.raises(UserInputError, match="takes 3 channels"):
        export_onnx(TinyNet(), tmp_path / "x.onnx", input_shape=(1, 4, 32, 32))


def test_static_export_has_fixed_dims(tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(TinyNet(), path, input_shape=(1, 3, 24, 40), dynamic=False, verify=False, num_classes=3)
    proto = onnx.load(str(path))
    assert _dims(proto.graph.input[0]) == [1, 3, 24, 40]
    assert read_metadata(path)["dynamic_axes"] == ""


def test_failed_verification_exits_4_writes_the_report_but_no_model(tmp_path, monkeypatch):
    import segdeploy.verify as verify_module
    from segdeploy.cli import app

    real_verify = verify_module.verify

    def strict_verify(*args, **kwargs):
        report = real_verify(*args, **kwargs)
        report.results[0].passed = False  # as if ONNX Runtime had disagreed
        return report

    monkeypatch.setattr(verify_module, "verify", strict_verify)
    (tmp_path / "ppm.py").write_text(USER_PPM)
    out, report = tmp_path / "bad.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        ["export", f"{tmp_path / 'ppm.py'}:Pyramid", "-o", str(out), "--input-shape", "1x3x32x32",
         "--num-classes", "4", "--report", str(report)],
    )
    assert result.exit_code == 4, result.output
    assert "max rel" in result.output and "not written" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ppm.py", "report.json"]
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] is False and data["rewrites"] == ["adaptive_avg_pool"]


def test_capture_failure_is_an_export_error_and_writes_nothing(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # Python control flow on a value: torch.export refuses it

    with pytest.raises(ExportError):
        export_onnx(DataDependent(), tmp_path / "x.onnx", input_shape=(1, 3, 8, 8), verify=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_export_writes_summary_and_report(tmp_path):
    from segdeploy.cli import app

    (tmp_path / "ppm.py").write_text(USER_PPM)
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        ["export", f"{tmp_path / 'ppm.py'}:Pyramid", "-o", str(out), "--input-shape", "1x3x40x48",
         "--num-classes", "4", "--static", "--no-verify", "--report", str(report)],
    )
    assert result.exit_code == 0, result.output
    assert "adaptive_avg_pool" in result.output and "opset" in result.output
    data = json.loads(report.read_text())
    assert data["opset"] == 17 and data["dynamic"] is False and data["rewrites"] == ["adaptive_avg_pool"]


def test_cli_export_refuses_bad_opset_with_exit_code_2():
    from segdeploy.cli import app

    result = CliRunner().invoke(app, ["export", "unet", "--opset", "21"])
    assert result.exit_code == 2
    assert "13 to 20" in result.output
