"""Parity metrics, thresholds, verification shapes, ``verify`` and the ``verify`` command."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.errors import UserInputError, VerificationError
from segdeploy.models.loading import load_model
from segdeploy.verify import compare, mean_iou, thresholds_for, verification_shapes, verify

TINY_NET = '''
import torch
from torch import nn
from torch.nn import functional as F


class Tiny(nn.Module):
    def __init__(self, num_classes=4, in_channels=3):
        super().__init__()
        self.features = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        y = self.classifier(F.max_pool2d(F.relu(self.features(x)), 2))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def tiny(num_classes=4, in_channels=3):
    torch.manual_seed(0)
    return Tiny(num_classes, in_channels)
'''


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A user model file, its ONNX export with segdeploy-style metadata, and a perturbed checkpoint."""
    import onnx

    root = tmp_path_factory.mktemp("verify")
    (root / "net.py").write_text(TINY_NET)
    spec = f"{root / 'net.py'}:tiny"
    model = load_model(spec, num_classes=4).module
    path = root / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.randn(1, 3, 32, 32),), str(path), input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}}, opset_version=17, dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, {"trace_shape": "1x3x32x32", "num_classes": "4", "precision": "fp32"})
    onnx.save(proto, str(path))

    perturbed = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    torch.save(perturbed, root / "perturbed.pt")
    return root, spec, model


# --------------------------------------------------------------------------- metrics


def _one_hot_logits(labels: list[list[int]], classes: int = 3) -> np.ndarray:
    lab = np.array(labels)
    return (np.eye(classes, dtype=np.float32)[lab] * 5.0).transpose(2, 0, 1)[None]


def test_agreement_and_miou_on_a_hand_computed_4x4_example():
    reference = [[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [2, 2, 2, 2],
                 [2, 2, 2, 2]]
    candidate = [[0, 0, 0, 1],   # (0, 2): 1 -> 0
                 [0, 0, 1, 1],
                 [2, 2, 2, 2],
                 [2, 2, 2, 1]]   # (3, 3): 2 -> 1
    result = compare(_one_hot_logits(candidate), _one_hot_logits(reference), shape=(1, 3, 4, 4))
    # 14 of 16 pixels agree. IoU: class 0 = 4/5, class 1 = 3/5, class 2 = 7/8.
    assert result.agreement == pytest.approx(14 / 16)
    assert result.miou == pytest.approx((4 / 5 + 3 / 5 + 7 / 8) / 3)
    assert result.max_abs_error == pytest.approx(5.0) and result.max_rel_error == pytest.approx(1.0)
    assert not result.passed and any("agreement" in f for f in result.failed)


def test_miou_ignores_classes_absent_from_both_predictions():
    a = np.array([[0, 0], [3, 3]])
    assert mean_iou(a, a, num_classes=10) == 1.0
    assert mean_iou(np.zeros((2, 2)), np.ones((2, 2)), num_classes=2) == 0.0


def test_relative_error_is_scaled_by_the_largest_reference_logit_and_p99_ignores_one_outlier():
    reference = np.zeros((1, 2, 25, 40), np.float32)
    reference[0, 0] = 10.0
    candidate = reference.copy()
    candidate[0, 1, 0, 0] = 0.5  # one element in 2000
    result = compare(candidate, reference)
    assert result.max_abs_error == pytest.approx(0.5)
    assert result.max_rel_error == pytest.approx(0.05)
    assert result.p99_rel_error == 0.0
    assert result.agreement == 1.0
    assert not result.passed  # FP32 strict judges the maximum
    assert compare(candidate, reference, thresholds_for("fp32", index_unpooling=True)).passed


def test_non_finite_candidate_fails_and_shape_mismatch_is_a_verification_error():
    reference = np.ones((1, 3, 4, 4), np.float32)
    candidate = reference.copy()
    candidate[0, 0, 0, 0] = np.nan
    result = compare(candidate, reference)
    assert not result.passed and math.isinf(result.max_rel_error)
    with pytest.raises(VerificationError, match="1x3x4x5 differs from the reference's 1x3x4x4"):
        compare(np.ones((1, 3, 4, 5)), reference)


def test_thresholds_per_precision_and_unpooling():
    strict = thresholds_for("fp32")
    assert (strict.max_rel_error, strict.min_agreement, strict.criterion) == (1e-4, 0.9999, "max-relative")
    unpool = thresholds_for("fp32", index_unpooling=True)
    assert unpool.criterion == "agreement+p99" and unpool.max_rel_error is None and unpool.p99_rel_error == 1e-2
    assert thresholds_for("fp16").max_rel_error == 1e-2
    with pytest.raises(UserInputError, match="fp32 or fp16"):
        thresholds_for("int4")


def test_verification_shapes_include_the_trace_an_odd_size_and_batch_2():
    shapes = verification_shapes((1, 3, 64, 64), min_size=32)
    assert shapes[0] == (1, 3, 64, 64) and len(shapes) >= 3
    assert any(h % 2 and w % 2 and h != w for _, _, h, w in shapes)
    assert any(n == 2 for n, *_ in shapes)
    assert all(c == 3 and min(h, w) >= 32 for _, c, h, w in verification_shapes((1, 3, 32, 32), min_size=48))


# --------------------------------------------------------------------------- verify()


def test_verify_passes_the_faithful_export_and_reports_the_criterion(workdir):
    root, _, model = workdir
    lines: list[str] = []
    report = verify(root / "tiny.onnx", model, shapes=verification_shapes((1, 3, 32, 32)), progress=lines.append)
    assert report.passed, report.worst()
    assert len(report.results) == 3 and len(lines) == 3
    assert report.worst().startswith("passed [max-relative, fp32]")
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["criteria"]["max_rel_error"] == 1e-4


def test_verify_fails_a_perturbed_reference_with_the_numbers(workdir):
    root, spec, _ = workdir
    other = load_model(spec, num_classes=4, weights=root / "perturbed.pt").module
    report = verify(root / "tiny.onnx", other, shapes=[(1, 3, 33, 35)])
    assert not report.passed
    assert "FAILED at 1x3x33x35" in report.worst() and "max rel" in report.worst()
    assert report.results[0].max_rel_error > 1e-4


# --------------------------------------------------------------------------- CLI


def test_verify_cli_reads_shapes_from_metadata_and_writes_the_json_report(workdir, tmp_path):
    root, spec, _ = workdir
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["verify", str(root / "tiny.onnx"), "--model", spec, "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "passed [max-relative, fp32]" in result.output
    data = json.loads(report_path.read_text())
    assert [r["shape"] for r in data["results"]] == ["1x3x32x32", "1x3x33x35", "2x3x24x40"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp files left


def test_verify_cli_exits_4_with_the_worst_numbers_on_failure(workdir, tmp_path):
    root, spec, _ = workdir
    report_path = tmp_path / "report.json"
    args = ["verify", str(root / "tiny.onnx"), "--model", spec, "--weights", str(root / "perturbed.pt"),
            "--shape", "2x3x40x33", "--report", str(report_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "verification failed" in error_lines[0] and "max rel" in error_lines[0]
    assert json.loads(report_path.read_text())["passed"] is False


def test_verify_cli_names_the_expected_shape_for_a_wrong_channel_count(workdir):
    root, spec, _ = workdir
    result = CliRunner().invoke(app, ["verify", str(root / "tiny.onnx"), "--model", spec, "--shape", "1x4x32x32"])
    assert result.exit_code == 2
    assert "1x4x32x32" in result.output and "3 channels" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "missing"])
def test_verify_cli_refuses_files_that_are_not_onnx_in_one_line(workdir, tmp_path, kind):
    root, spec, _ = workdir
    path = tmp_path / f"{kind}.onnx"
    data = (root / "tiny.onnx").read_bytes()
    content = {"random": np.random.default_rng(0).bytes(3000), "truncated": data[: len(data) // 2], "empty": b""}
    if kind in content:
        path.write_bytes(content[kind])
    result = CliRunner().invoke(app, ["verify", str(path), "--model", spec, "--shape", "1x3x32x32"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{kind}.onnx" in lines[0]
