"""export_onnx and `segdeploy export`: every zoo model and user modules, exact opsets, metadata, failures."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from helpers import DIVISIBLE_BY_32, STRICT_UNET, TEXTBOOK_SEGNET, calibrate_batchnorm, zoo_params
from torch import nn
from typer.testing import CliRunner

from segdeploy.artifact import read_metadata
from segdeploy.errors import ExportError, UserInputError
from segdeploy.export.translate import nonstandard_ops
from segdeploy.models import create_model, model_info
from segdeploy.pipeline import IOFormat, ModelSpec, export_onnx
from segdeploy.proof import PROBE_CRITERION

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
    assert nonstandard_ops(proto) == []  # no ONNX Runtime contrib op (com.microsoft::FusedConv, ...)
    assert all(len([o for o in n.output if o]) == 1 for n in proto.graph.node if n.op_type == "MaxPool")


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "tiny.onnx"
    result = export_onnx(TinyNet(), path, input_shape=(1, 3, 32, 40))
    return path, result


def _calibrated(name: str, in_channels: int = 3, num_classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=num_classes, in_channels=in_channels, **model_info(name).test_config)
    return calibrate_batchnorm(model, (4, in_channels, 64, 64))


@pytest.mark.parametrize("name", zoo_params())
def test_every_zoo_model_with_calibrated_weights_exports_lints_clean_and_verifies(name, tmp_path):
    path = tmp_path / f"{name}.onnx"
    result = export_onnx(_calibrated(name), path, input_shape=(1, 3, 64, 64))
    assert _opset(path) == 17
    assert _dims(onnx.load(str(path)).graph.input[0]) == ["batch", 3, "height", "width"]
    assert result.lint is not None and result.lint.ok, result.lint.summary()
    report = result.verification
    assert report.passed, report.worst()
    assert report.criteria.criterion == "noise-floor"
    exact = [r for r in report.results if r.criterion == "noise-floor"]
    probes = [r.shape for r in report.results if r.criterion == PROBE_CRITERION]
    shapes = [r.shape for r in exact]
    assert len(shapes) == 2 and any(s[0] == 2 for s in shapes) and any(s[2] % 2 and s[3] % 2 for s in shapes)
    assert any(s[2] >= 128 for s in probes) and any(s[3] >= 96 for s in probes)  # each side well above the trace
    assert all(r.floor > 0 and r.ratio <= report.criteria.noise_multiple for r in exact)
    assert set(model_info(name).rewrites) <= set(result.metadata.rewrites)
    if "max_unpool" in result.metadata.rewrites:  # the reference followed the file's window choices
        assert result.metadata.unpool_inputs and all(r.windows_flipped is not None for r in exact)
    _assert_tensorrt_friendly(path)


def test_user_segnet_with_functional_unpooling_exports_and_verifies(tmp_path):
    (tmp_path / "tiny_segnet.py").write_text(USER_SEGNET)
    path = tmp_path / "segnet.onnx"
    result = export_onnx(
        f"{tmp_path / 'tiny_segnet.py'}:build", path, input_shape=(1, 3, 37, 50), spec=ModelSpec(num_classes=4)
    )
    assert result.metadata.rewrites == ("max_unpool",)
    assert result.verification.passed, result.verification.worst()
    assert read_metadata(path).architecture.endswith("tiny_segnet.py:build")
    _assert_tensorrt_friendly(path)


def test_user_adaptive_pooling_module_is_exact_where_bins_do_not_divide(tmp_path):
    from segdeploy.models.loading import load_model
    from segdeploy.verify import verify

    (tmp_path / "ppm.py").write_text(USER_PPM)
    spec, path = f"{tmp_path / 'ppm.py'}:Pyramid", tmp_path / "ppm.onnx"
    torch.manual_seed(7)
    result = export_onnx(spec, path, input_shape=(1, 3, 36, 48), spec=ModelSpec(num_classes=4))
    assert result.metadata.rewrites == ("adaptive_avg_pool",)
    assert result.verification.passed, result.verification.worst()
    torch.manual_seed(7)  # the same weights as the exported module
    reference = load_model(spec, num_classes=4).module
    uneven = verify(path, reference, shapes=[(1, 3, 37, 50), (2, 3, 64, 45), (1, 3, 7, 9)])
    assert uneven.passed, uneven.worst()


@pytest.mark.parametrize("opset", [13, 20])
def test_the_file_has_exactly_the_requested_opset(opset, tmp_path):
    path = tmp_path / f"o{opset}.onnx"
    result = export_onnx(TinyNet(), path, input_shape=(1, 3, 32, 32), opset=opset, verify=False)
    assert _opset(path) == opset == result.metadata.opset
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


def test_metadata_of_a_module_export_names_its_classes_and_source(tiny_export):
    path, result = tiny_export
    meta = read_metadata(path)
    assert meta == result.metadata
    assert meta.architecture == "TinyNet" and meta.source == "object"
    assert meta.num_classes == 3  # read from the module's output, not a default
    assert meta.in_channels == 3 and meta.trace_shape == (1, 3, 32, 40)
    assert meta.dynamic_axes == ("batch", "height", "width") and meta.size_multiple == 1
    assert meta.opset == 17 and meta.precision.value == "fp32" and meta.rewrites == ()
    assert meta.segdeploy_version


def test_verify_cli_says_plainly_that_a_python_object_export_is_verified_from_python(tiny_export):
    from segdeploy.cli import app

    path, _ = tiny_export
    result = CliRunner().invoke(app, ["verify", str(path)])
    assert result.exit_code == 2
    assert "exported from a Python object" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("opset", [12, 21])
def test_opsets_outside_13_to_20_are_refused_with_the_range(opset, tmp_path):
    with pytest.raises(UserInputError, match="choose 13 to 20"):
        export_onnx(TinyNet(), tmp_path / "x.onnx", input_shape=(1, 3, 32, 32), opset=opset)


def test_a_model_that_raises_at_the_trace_shape_is_reported_as_the_models_error(tmp_path):
    with pytest.raises(UserInputError, match=r"the model raised at 1x4x32x32: RuntimeError: .*channels"):
        export_onnx(TinyNet(), tmp_path / "x.onnx", input_shape=(1, 4, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_static_export_has_fixed_dims(tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(TinyNet(), path, input_shape=(1, 3, 24, 40), dynamic=False, verify=False)
    proto = onnx.load(str(path))
    assert _dims(proto.graph.input[0]) == [1, 3, 24, 40]
    assert read_metadata(path).dynamic_axes == ()


def test_cli_static_export_verifies_the_fixed_file_at_its_one_shape(tmp_path):
    from segdeploy.cli import app

    out, report = tmp_path / "segnet.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(app, [
        "export", "segnet", "--static", "--input-shape", "1x3x64x64", "--num-classes", "4",
        "--config", "width_mult=0.125", "-o", str(out), "--report", str(report),
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert [r["shape"] for r in data["verification"]["results"]] == ["1x3x64x64"]
    assert data["dynamic"] is False and data["verification"]["passed"] is True
    assert read_metadata(out).config == {"width_mult": 0.125}


@pytest.fixture
def verification_disagrees(monkeypatch):
    """``segdeploy.verify.verify`` as if ONNX Runtime had disagreed with PyTorch at the first shape."""
    import segdeploy.verify as verify_module

    real_verify = verify_module.verify

    def strict_verify(*args, **kwargs):
        report = real_verify(*args, **kwargs)
        report.results[0].passed = False  # as if ONNX Runtime had disagreed
        report.results[0].failed = ["error 1 is 9x the noise floor"]
        return report

    monkeypatch.setattr(verify_module, "verify", strict_verify)


def test_failed_verification_exits_4_writes_the_report_but_no_model(tmp_path, verification_disagrees):
    from segdeploy.cli import app

    (tmp_path / "ppm.py").write_text(USER_PPM)
    out, report = tmp_path / "bad.onnx", tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "export",
            f"{tmp_path / 'ppm.py'}:Pyramid",
            "-o",
            str(out),
            "--input-shape",
            "1x3x32x32",
            "--num-classes",
            "4",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 4, result.output
    assert "noise floor" in result.output and "not written" in result.output
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["ppm.py", "report.json"]
    data = json.loads(report.read_text())
    assert data["verification"]["passed"] is False and data["rewrites"] == ["adaptive_avg_pool"]


def test_a_failed_export_raises_its_report_and_would_be_result_as_attributes(tmp_path, verification_disagrees):
    import pickle

    from segdeploy.errors import VerificationError
    from segdeploy.pipeline import ExportVerificationError

    target = tmp_path / "tiny.onnx"
    with pytest.raises(VerificationError) as caught:
        export_onnx(TinyNet(), target, input_shape=(1, 3, 32, 40))
    error = caught.value
    assert isinstance(error, ExportVerificationError) and error.exit_code == 4
    assert not error.report.passed and "noise floor" in error.report.worst()
    assert error.result.path == target and error.result.verification is error.report
    assert error.result.to_dict()["verification"]["passed"] is False
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary
    again = pickle.loads(pickle.dumps(error))  # e.g. across processes: the attributes travel with it
    assert str(again) == str(error) and again.report.worst() == error.report.worst()


def test_the_public_names_are_the_composed_export_and_its_option_groups():
    import segdeploy
    import segdeploy.pipeline
    from segdeploy.export import options

    assert segdeploy.export_onnx is segdeploy.pipeline.export_onnx
    assert segdeploy.ExportResult is segdeploy.pipeline.ExportResult
    assert (segdeploy.ModelSpec, segdeploy.IOFormat, segdeploy.Calibration) == (
        options.ModelSpec,
        options.IOFormat,
        options.Calibration,
    )


def test_option_errors_come_before_the_output_path_is_checked(tmp_path):
    missing_dir = tmp_path / "no" / "such" / "dir" / "x.onnx"
    with pytest.raises(UserInputError, match="opset"):
        export_onnx(TinyNet(), missing_dir, input_shape=(1, 3, 32, 32), opset=9)
    with pytest.raises(UserInputError, match="needs calibration data"):
        export_onnx(TinyNet(), missing_dir, input_shape=(1, 3, 32, 32), precision="int8")
    with pytest.raises(UserInputError, match="directory"):
        export_onnx(TinyNet(), missing_dir, input_shape=(1, 3, 32, 32))


def test_capture_failure_names_the_cause_and_the_models_line_and_writes_nothing(tmp_path):
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # Python control flow on a value: torch.export refuses it

    with pytest.raises(ExportError) as caught:
        export_onnx(DataDependent(), tmp_path / "x.onnx", input_shape=(1, 3, 8, 8), verify=False)
    message = str(caught.value)
    assert "torch.export could not capture the model" in message
    assert "Failed to export" not in message and "step 1/3" not in message  # not the exporter's generic line
    assert "test_export.py" in message and "x.sum() > 0" in message  # where, in the model's own source
    assert list(tmp_path.iterdir()) == []


def test_cli_export_writes_summary_and_report(tmp_path):
    from segdeploy.cli import app

    (tmp_path / "ppm.py").write_text(USER_PPM)
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    result = CliRunner().invoke(
        app,
        [
            "export",
            f"{tmp_path / 'ppm.py'}:Pyramid",
            "-o",
            str(out),
            "--input-shape",
            "1x3x40x48",
            "--num-classes",
            "4",
            "--static",
            "--no-verify",
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "adaptive_avg_pool" in result.output and "opset" in result.output
    data = json.loads(report.read_text())
    assert data["opset"] == 17 and data["dynamic"] is False and data["rewrites"] == ["adaptive_avg_pool"]
    assert set(data["stage_seconds"]) >= {"capture", "rewrite", "onnx", "simplify", "check", "lint"}


def test_cli_export_refuses_bad_opset_with_exit_code_2():
    from segdeploy.cli import app

    result = CliRunner().invoke(app, ["export", "unet", "--opset", "21"])
    assert result.exit_code == 2
    assert "13 to 20" in result.output


def test_cli_config_reaches_the_builder_and_bad_options_are_one_line(tmp_path):
    from segdeploy.cli import app

    result = CliRunner().invoke(
        app,
        [
            "export",
            "unet",
            "--config",
            "width_mult=0.125",
            "--config",
            "batch_norm=false",
            "--input-shape",
            "1x3x32x32",
            "--no-verify",
            "-o",
            str(tmp_path / "u.onnx"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert read_metadata(tmp_path / "u.onnx").config == {"width_mult": 0.125, "batch_norm": False}
    bad = CliRunner().invoke(app, ["export", "unet", "--config", "no_such_option=1", "-o", str(tmp_path / "v.onnx")])
    assert bad.exit_code == 2 and "no_such_option" in bad.output and "Traceback" not in bad.output
    malformed = CliRunner().invoke(app, ["export", "unet", "--config", "width_mult", "-o", str(tmp_path / "w.onnx")])
    assert malformed.exit_code == 2 and "key=value" in malformed.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u.onnx"]


# --------------------------------------------------------------------------- models people write
def _user_file(tmp_path, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    return str(tmp_path / f"{name}.py")


@pytest.mark.slow
def test_textbook_segnet_exports_at_multiples_of_32_with_a_clear_note(tmp_path):
    file = _user_file(tmp_path, "textbook_segnet", TEXTBOOK_SEGNET)
    path = tmp_path / "textbook.onnx"
    result = export_onnx(f"{file}:build", path, input_shape=(1, 3, 64, 64), spec=ModelSpec(num_classes=4))
    assert result.size_rule.multiple == 32 and "accepts only multiples of 32" in " ".join(result.warnings)
    meta = read_metadata(path)
    assert (meta.size_multiple, meta.min_size) == (32, 32)
    report = result.verification
    assert report.passed, report.worst()
    assert all(h % 32 == 0 and w % 32 == 0 for _, _, h, w in (r.shape for r in report.results))
    shapes = {r.shape for r in report.results}
    # Probes cover batch 2 and sides well above the traced 64x64 (the traced shape itself is not re-probed).
    assert len(shapes) >= 4 and any(s[0] == 2 for s in shapes)
    assert any(h >= 2 * 64 or w >= 2 * 64 for _, _, h, w in shapes)


@pytest.mark.slow
def test_textbook_segnet_exports_through_the_cli_with_default_options(tmp_path):
    from segdeploy.cli import app

    file = _user_file(tmp_path, "textbook_segnet", TEXTBOOK_SEGNET)
    namespace: dict = {}
    exec(TEXTBOOK_SEGNET, namespace)
    weights = tmp_path / "textbook.pt"
    torch.save(calibrate_batchnorm(namespace["build"](), (4, 3, 64, 64)).state_dict(), weights)  # "trained" weights
    out = tmp_path / "textbook.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            f"{file}:build",
            "--input-shape",
            "1x3x96x64",
            "--num-classes",
            "4",
            "--weights",
            str(weights),
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "accepts only multiples of 32" in result.output and "passed" in result.output
    # the model is rebuilt from the file's metadata; the weights are the user's
    verified = CliRunner().invoke(app, ["verify", str(out), "--weights", str(weights)])
    assert verified.exit_code == 0, verified.output
    # every later consumer refuses sizes the model does not take, in one line
    for args in (
        ["verify", str(out), "--weights", str(weights), "--shape", "1x3x80x80"],
        ["bench", str(out), "--shape", "1x3x80x80", "--iters", "1"],
    ):
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and "multiples of 32" in refused.output
        assert "nearest: 64x64 or 96x96" in refused.output


# TEXTBOOK_SEGNET with two stages: the same unpooling without output_size, so the sizes are multiples of 4.
SMALL_TEXTBOOK_SEGNET = TEXTBOOK_SEGNET.replace(
    "enc = [(in_channels, 8), (8, 8), (8, 12), (12, 12), (12, 16)]", "enc = [(in_channels, 8), (8, 12)]"
).replace("dec = [(16, 12), (12, 12), (12, 8), (8, 8), (8, 8)]", "dec = [(12, 8), (8, 8)]")


def test_user_segnet_with_textbook_unpooling_exports_verifies_and_is_refused_other_sizes_through_the_cli(tmp_path):
    from segdeploy.cli import app

    assert SMALL_TEXTBOOK_SEGNET.count("(8, 12)") == 1  # the two-stage edit applied
    file = _user_file(tmp_path, "small_segnet", SMALL_TEXTBOOK_SEGNET)
    namespace: dict = {}
    exec(SMALL_TEXTBOOK_SEGNET, namespace)
    weights = tmp_path / "small.pt"
    torch.save(calibrate_batchnorm(namespace["build"](), (4, 3, 32, 32)).state_dict(), weights)
    out = tmp_path / "small.onnx"
    args = ["export", f"{file}:build", "--input-shape", "1x3x24x16", "--num-classes", "4", "--weights", str(weights)]
    result = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "accepts only multiples of 4" in result.output and "passed" in result.output
    meta = read_metadata(out)
    assert meta.size_multiple == 4 and meta.rewrites == ("max_unpool",)
    # the model is rebuilt from the file's metadata; the weights are the user's
    verified = CliRunner().invoke(app, ["verify", str(out), "--weights", str(weights)])
    assert verified.exit_code == 0, verified.output
    # every later consumer refuses sizes the model does not take, in one line
    for command in (
        ["verify", str(out), "--weights", str(weights), "--shape", "1x3x18x18"],
        ["bench", str(out), "--shape", "1x3x18x18", "--iters", "1"],
    ):
        refused = CliRunner().invoke(app, command)
        assert refused.exit_code == 2 and "multiples of 4" in refused.output and "20x20" in refused.output


def test_unet_whose_skips_must_line_up_exports_at_multiples_of_16(tmp_path):
    file = _user_file(tmp_path, "strict_unet", STRICT_UNET)
    result = export_onnx(
        f"{file}:StrictUNet", tmp_path / "u.onnx", input_shape=(1, 3, 48, 64), spec=ModelSpec(num_classes=3)
    )
    assert result.size_rule.multiple == 16
    assert result.verification.passed, result.verification.worst()


def test_model_that_raises_on_other_sizes_exports_and_verifies_at_valid_ones(tmp_path):
    file = _user_file(tmp_path, "checked", DIVISIBLE_BY_32)
    result = export_onnx(
        f"{file}:Checked", tmp_path / "c.onnx", input_shape=(1, 3, 64, 96), spec=ModelSpec(num_classes=2)
    )
    assert result.size_rule.multiple == 32
    assert result.verification.passed, result.verification.worst()
    assert read_metadata(tmp_path / "c.onnx").dynamic_axes == ("batch", "height", "width")


def test_one_channel_module_takes_its_channels_from_the_input_shape(tmp_path):
    class OneChannelPyramid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(3)
            self.head = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            f = self.stem(x)
            ctx = torch.nn.functional.interpolate(self.pool(f), size=f.shape[-2:], mode="bilinear")
            return self.head(torch.cat([f, ctx], 1))

    model = calibrate_batchnorm(OneChannelPyramid(), (4, 1, 64, 64))
    path = tmp_path / "gray.onnx"
    result = export_onnx(model, path, input_shape=(1, 1, 64, 64))
    assert result.verification.passed, result.verification.worst()
    meta = read_metadata(path)
    assert (meta.in_channels, meta.num_classes) == (1, 2) and meta.rewrites == ("adaptive_avg_pool",)
    assert _dims(onnx.load(str(path)).graph.input[0]) == ["batch", 1, "height", "width"]


def test_cli_exports_a_one_channel_zoo_model_from_the_input_shape(tmp_path):
    from segdeploy.cli import app

    out = tmp_path / "unet1.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            "unet",
            "--input-shape",
            "1x1x32x32",
            "--config",
            "width_mult=0.125",
            "--num-classes",
            "2",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    meta = read_metadata(out)
    assert (meta.in_channels, meta.num_classes, meta.architecture, meta.source) == (1, 2, "unet", "zoo")


def test_an_export_the_lint_rejects_is_flagged_not_tensorrt_ready(tmp_path):
    from segdeploy.cli import app

    source = textwrap.dedent(
        """
        import torch.nn.functional as F
        from torch import nn

        class OverlappingFold(nn.Module):  # F.fold over overlapping windows: Col2Im, which TensorRT lacks
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(3, 2, 3, padding=1)

            def forward(self, x):
                patches = F.unfold(self.conv(x), kernel_size=3, padding=1)
                return F.fold(patches, output_size=x.shape[-2:], kernel_size=3, padding=1) / 9
        """
    )
    file = _user_file(tmp_path, "aa", source)
    out = tmp_path / "aa.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            f"{file}:OverlappingFold",
            "--opset",
            "18",
            "--input-shape",
            "1x3x32x32",
            "--num-classes",
            "2",
            "--no-verify",
            "-o",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "NOT TensorRT-ready" in result.output and "Col2Im" in result.output
    built = CliRunner().invoke(app, ["build", str(out), "-o", str(tmp_path / "aa.engine")])
    assert built.exit_code == 2 and "not TensorRT-ready" in built.output and "Col2Im" in built.output
    assert not (tmp_path / "aa.engine").exists()


def test_cli_tables_are_not_cut_when_the_output_is_not_a_terminal(tmp_path):
    from segdeploy.cli import app

    file = _user_file(tmp_path, "a_user_model_with_a_rather_long_file_name", USER_PPM)
    out = tmp_path / "a_user_model_with_a_rather_long_output_file_name_for_the_summary.onnx"
    result = CliRunner().invoke(
        app,
        [
            "export",
            f"{file}:Pyramid",
            "--input-shape",
            "1x3x32x32",
            "--num-classes",
            "4",
            "-o",
            str(out),
            "--no-verify",
        ],
        env={"COLUMNS": "80"},
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output and "…" not in result.output


# --------------------------------------------------------------------------- fused pre/post-processing
@pytest.mark.parametrize("input_format", ["uint8-nhwc", pytest.param("uint8-nchw", marks=pytest.mark.slow)])
def test_uint8_classmap_file_gives_pytorchs_argmax_of_the_normalized_input(tmp_path, input_format):
    from segdeploy.criteria import top2_margin
    from segdeploy.reference import normalize

    model = _calibrated("unet")
    path = tmp_path / "fused.onnx"
    result = export_onnx(
        model,
        path,
        input_shape=(1, 3, 64, 64),
        io=IOFormat(
            input_format=input_format, output_kind="classmap", color="bgr", mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3)
        ),
    )
    assert result.verification.passed, result.verification.worst()
    assert result.lint.ok, [i.message for i in result.lint.issues]  # the uint8 input feeds only a Cast
    meta = read_metadata(path)
    assert meta.preprocessing.fused and meta.output.value == "classmap" and meta.num_classes == 5
    session = ort.InferenceSession(str(path))
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_outputs()[0].type == "tensor(int32)"
    rng = np.random.default_rng(0)
    for n, h, w in [(2, 45, 67), (1, 64, 64)]:
        nhwc = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
        raw = nhwc if input_format == "uint8-nhwc" else np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))
        classes = session.run(None, {"input": raw})[0]
        assert classes.shape == (n, h, w)
        with torch.no_grad():
            logits = model(torch.from_numpy(normalize(raw, meta.preprocessing, np.float32))).numpy()
        differ = classes != logits.argmax(axis=1)
        # bit-equal class maps except at near-ties (top-2 margin within float32 rounding of the logits)
        assert differ.mean() <= 1e-3
        assert np.all(top2_margin(logits)[differ] < 1e-4)
