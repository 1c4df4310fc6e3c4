"""Parity metrics, thresholds, verification shapes, ``verify`` and the ``verify`` command."""

from __future__ import annotations

import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from segdeploy.artifact import OutputKind
from segdeploy.cli import app
from segdeploy.criteria import NOISE_MULTIPLE, compare, mean_iou, thresholds_for
from segdeploy.errors import UserInputError, VerificationError
from segdeploy.models.loading import load_model
from segdeploy.verify import verification_shapes, verify

TINY_NET = """
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
"""


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
            model,
            (torch.randn(1, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}},
            opset_version=17,
            dynamo=False,
        )
    proto = onnx.load(str(path))
    onnx.helper.set_model_props(
        proto,
        {"trace_shape": "1x3x32x32", "num_classes": "4", "precision": "fp32", "size_multiple": "1", "min_size": "2"},
    )
    onnx.save(proto, str(path))

    perturbed = {k: v + 0.05 * torch.randn_like(v) for k, v in model.state_dict().items()}
    torch.save(perturbed, root / "perturbed.pt")
    return root, spec, model


# --------------------------------------------------------------------------- metrics


def _one_hot_logits(labels: list[list[int]], classes: int = 3) -> np.ndarray:
    lab = np.array(labels)
    return (np.eye(classes, dtype=np.float32)[lab] * 5.0).transpose(2, 0, 1)[None]


RELATIVE = thresholds_for("fp16")  # fixed relative error and agreement


def test_agreement_and_miou_on_a_hand_computed_4x4_example():
    reference = [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]]
    candidate = [
        [0, 0, 0, 1],  # (0, 2): 1 -> 0
        [0, 0, 1, 1],
        [2, 2, 2, 2],
        [2, 2, 2, 1],
    ]  # (3, 3): 2 -> 1
    ref = _one_hot_logits(reference)
    result = compare(_one_hot_logits(candidate), ref, ref.astype(np.float64), RELATIVE, shape=(1, 3, 4, 4))
    # 14 of 16 pixels agree. IoU: class 0 = 4/5, class 1 = 3/5, class 2 = 7/8.
    assert result.agreement == pytest.approx(14 / 16)
    assert result.miou == pytest.approx((4 / 5 + 3 / 5 + 7 / 8) / 3)
    assert result.error == pytest.approx(5.0) and result.max_rel_error == pytest.approx(1.0)
    assert not result.passed and any("agreement" in f for f in result.failed)


def test_miou_ignores_classes_absent_from_both_predictions():
    a = np.array([[0, 0], [3, 3]])
    assert mean_iou(a, a, num_classes=10) == 1.0
    assert mean_iou(np.zeros((2, 2)), np.ones((2, 2)), num_classes=2) == 0.0


def _noisy_pair(rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """A float64 'exact' output and a float32 one off by ``noise`` at most."""
    r64 = rng.standard_normal((1, 4, 16, 16)) * 3
    r32 = (r64 + rng.uniform(-noise, noise, r64.shape)).astype(np.float32)
    return r32, r64


def test_noise_floor_passes_an_error_within_the_multiple_and_fails_beyond_it():
    rng = np.random.default_rng(0)
    r32, r64 = _noisy_pair(rng, 1e-5)
    floor = np.abs(r32 - r64).max()
    within = (r64 + 3.0 * floor * np.sign(rng.standard_normal(r64.shape))).astype(np.float32)
    beyond = (r64 + 5.0 * floor * np.sign(rng.standard_normal(r64.shape))).astype(np.float32)
    ok = compare(within, r32, r64, thresholds_for("fp32"))
    assert ok.passed and 2.5 < ok.ratio < 3.5 and ok.floor == pytest.approx(floor)
    bad = compare(beyond, r32, r64, thresholds_for("fp32"))
    assert not bad.passed and bad.ratio > NOISE_MULTIPLE
    assert "noise floor" in bad.failed[0] and f"limit {NOISE_MULTIPLE:g}x" in bad.failed[0]


def test_noise_floor_scales_with_the_model_not_with_a_fixed_threshold():
    # the same absolute error passes a noisy model and fails a quiet one
    rng = np.random.default_rng(1)
    error = 2e-4
    for noise, should_pass in ((1e-4, True), (1e-6, False)):
        r32, r64 = _noisy_pair(rng, noise)
        candidate = (r64 + error * np.sign(rng.standard_normal(r64.shape))).astype(np.float32)
        assert compare(candidate, r32, r64, thresholds_for("fp32")).passed is should_pass


def test_class_map_flips_only_at_near_ties_pass_and_elsewhere_fail():
    rng = np.random.default_rng(2)
    r32, r64 = _noisy_pair(rng, 1e-5)
    margin = np.sort(r64, axis=1)[:, -1] - np.sort(r64, axis=1)[:, -2]
    labels = r64.argmax(axis=1).astype(np.int32)
    tie = np.unravel_index(np.argmin(margin), margin.shape)
    clear = np.unravel_index(np.argmax(margin), margin.shape)
    second = np.argsort(r64, axis=1)[:, -2]
    # make the near-tie pixel a real tie: flipping it is legitimate
    r64[(tie[0], labels[tie], tie[1], tie[2])] = r64[(tie[0], second[tie], tie[1], tie[2])] + 1e-9
    r32 = r32.copy()
    flipped_tie = labels.copy()
    flipped_tie[tie] = second[tie]
    t = thresholds_for("fp32")
    assert compare(flipped_tie, r32, r64, t, kind=OutputKind.CLASSMAP, scores=(r32, r64)).passed
    flipped_clear = labels.copy()
    flipped_clear[clear] = second[clear]
    result = compare(flipped_clear, r32, r64, t, kind=OutputKind.CLASSMAP, scores=(r32, r64))
    assert not result.passed and result.unexplained_flips == 1


def test_non_finite_candidate_fails_and_shape_mismatch_is_a_verification_error():
    rng = np.random.default_rng(3)
    r32, r64 = _noisy_pair(rng, 1e-6)
    candidate = r32.copy()
    candidate[0, 0, 0, 0] = np.nan
    result = compare(candidate, r32, r64, thresholds_for("fp32"))
    assert not result.passed and math.isinf(result.error)
    with pytest.raises(VerificationError, match="1x4x16x17 differs from the reference's 1x4x16x16"):
        compare(np.ones((1, 4, 16, 17)), r32, r64, thresholds_for("fp32"))


def test_an_output_without_noise_needs_an_exact_match():
    zeros = np.zeros((1, 2, 4, 4))
    assert compare(zeros.astype(np.float32), zeros.astype(np.float32), zeros, thresholds_for("fp32")).passed
    assert not compare(
        np.full((1, 2, 4, 4), 1e-3, np.float32), zeros.astype(np.float32), zeros, thresholds_for("fp32")
    ).passed


def test_thresholds_per_precision_and_unpooling():
    assert thresholds_for("fp32").criterion == "noise-floor"
    assert thresholds_for("fp32").noise_multiple == NOISE_MULTIPLE
    unpool = thresholds_for("fp32", index_unpooling=True)  # window choices unreadable (TensorRT)
    assert unpool.criterion == "agreement+p99" and unpool.p99_rel_error == 1e-2
    assert thresholds_for("fp16").max_rel_error == 1e-2
    with pytest.raises(UserInputError, match="precision"):
        thresholds_for("int4")
    assert thresholds_for("int8").criterion == "agreement+p99"


def test_verification_shapes_include_the_trace_an_odd_size_and_batch_2():
    shapes = verification_shapes((1, 3, 64, 64), min_size=32)
    assert shapes[0] == (1, 3, 64, 64) and len(shapes) == 3
    assert any(h % 2 and w % 2 and h != w for _, _, h, w in shapes)
    assert any(n == 2 for n, *_ in shapes)
    assert all(c == 3 and min(h, w) >= 32 for _, c, h, w in verification_shapes((1, 3, 32, 32), min_size=48))


def test_verification_shapes_respect_a_size_multiple_and_a_static_file():
    shapes = verification_shapes((1, 3, 256, 256), min_size=32, size_multiple=32)
    assert len(shapes) == 3 and all(h % 32 == 0 and w % 32 == 0 and min(h, w) >= 32 for _, _, h, w in shapes)
    assert len({(h, w) for _, _, h, w in shapes}) == 3  # every dynamic side varies
    assert verification_shapes((1, 3, 256, 256), static=True) == [(1, 3, 256, 256)]


# --------------------------------------------------------------------------- verify()


def test_verify_passes_the_faithful_export_and_reports_the_criterion(workdir):
    root, _, model = workdir
    lines: list[str] = []
    report = verify(root / "tiny.onnx", model, shapes=verification_shapes((1, 3, 32, 32)), progress=lines.append)
    assert report.passed, report.worst()
    assert len(report.results) == 3 and len(lines) == 3
    assert report.worst().startswith("passed, worst at") and "[noise-floor, fp32]" in report.worst()
    data = json.loads(json.dumps(report.to_dict()))
    assert data["passed"] is True and data["criteria"]["noise_multiple"] == NOISE_MULTIPLE
    for row in data["results"]:  # each shape shows its error, its floor and their ratio
        assert row["floor"] > 0 and row["ratio"] == pytest.approx(row["error"] / row["floor"])


def test_verify_fails_a_perturbed_reference_with_the_numbers(workdir):
    root, spec, _ = workdir
    other = load_model(spec, num_classes=4, weights=root / "perturbed.pt").module
    report = verify(root / "tiny.onnx", other, shapes=[(1, 3, 33, 35)])
    assert not report.passed
    assert "FAILED at 1x3x33x35" in report.worst() and "noise floor" in report.worst()
    assert report.results[0].ratio > 100


# --------------------------------------------------------------------------- CLI


def test_verify_cli_reads_shapes_from_metadata_and_writes_the_json_report(workdir, tmp_path):
    root, spec, _ = workdir
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(app, ["verify", str(root / "tiny.onnx"), "--model", spec, "--report", str(report_path)])
    assert result.exit_code == 0, result.output
    assert "[noise-floor, fp32]" in result.output and "passed" in result.output
    data = json.loads(report_path.read_text())
    # the shapes come from the metadata: float64 at an odd size at half scale and batch 2; sizes well
    # above the trace, with the minimum on the other side, as float32 probes
    exact = [r["shape"] for r in data["results"] if r["criterion"] == "noise-floor"]
    probes = [r["shape"] for r in data["results"] if r["criterion"] == "float32-probe"]
    assert exact == ["1x3x17x19", "2x3x8x12"]
    assert "1x3x32x32" not in probes and any(int(s.split("x")[2]) >= 64 for s in probes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp files left


def test_verify_cli_exits_4_with_the_worst_numbers_on_failure(workdir, tmp_path):
    root, spec, _ = workdir
    report_path = tmp_path / "report.json"
    args = [
        "verify",
        str(root / "tiny.onnx"),
        "--model",
        spec,
        "--weights",
        str(root / "perturbed.pt"),
        "--shape",
        "2x3x40x33",
        "--report",
        str(report_path),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 4
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "verification failed" in error_lines[0] and "noise floor" in error_lines[0]
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


# --------------------------------------------------------------------------- outputs without signal

DEAD_NETS = """
import torch
from torch import nn


class Zero(nn.Module):
    # every ReLU input negative: a dead network outputs zeros
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x) - 1e6)


class Vanishing(nn.Module):
    # activations shrunk by untouched BatchNorm statistics, layer after layer: ~1e-50 in float64, 0 in float32
    def __init__(self, num_classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * 1e-25 * 1e-25
"""


def test_no_signal_names_zero_tiny_and_constant_outputs_and_passes_real_ones():
    from segdeploy.criteria import no_signal

    rng = np.random.default_rng(0)
    normal = rng.standard_normal((1, 3, 8, 8))
    assert no_signal(normal.astype(np.float32), normal) is None
    assert "zero everywhere" in no_signal(np.zeros((1, 3, 8, 8), np.float32), np.zeros((1, 3, 8, 8)))
    tiny = normal * 1e-50
    assert "max |x| " in no_signal(tiny.astype(np.float32), tiny) and "BatchNorm" in no_signal(tiny, tiny)
    assert "constant" in no_signal(np.full((1, 3, 8, 8), 0.25, np.float32), np.full((1, 3, 8, 8), 0.25))
    assert no_signal(np.zeros((1, 8, 8), np.int32), None) is None  # a class map: one class is an answer


@pytest.mark.parametrize(("factory", "reason"), [("Zero", "zero everywhere"), ("Vanishing", "normal range")])
def test_an_output_without_signal_is_refused_not_judged_ok(tmp_path, factory, reason):
    from segdeploy.pipeline import export_onnx

    (tmp_path / "dead.py").write_text(DEAD_NETS)
    spec = f"{tmp_path / 'dead.py'}:{factory}"
    # no signal says nothing about sizes: the rule is not narrowed, the first shape without one is named
    with pytest.raises(VerificationError, match=f"cannot be verified.*CANNOT VERIFY at 1x3x17x19: .*{reason}"):
        export_onnx(spec, tmp_path / "dead.onnx", input_shape=(1, 3, 32, 32))
    assert not (tmp_path / "dead.onnx").exists()
    export_onnx(spec, tmp_path / "dead.onnx", input_shape=(1, 3, 32, 32), verify=False)
    result = CliRunner().invoke(app, ["verify", str(tmp_path / "dead.onnx")])
    assert result.exit_code == 4 and "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "CANNOT VERIFY" in error_lines[0] and re.search(reason, error_lines[0])


def test_no_zoo_model_at_its_initial_weights_lacks_signal():
    # `segdeploy export NAME` without --weights verifies the builder's initial weights: they must be judgeable
    from segdeploy.artifact import Preprocessing
    from segdeploy.criteria import no_signal
    from segdeploy.models import list_models
    from segdeploy.reference import Reference

    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)
    for name in list_models():
        module = load_model(name, width_mult=0.125).module
        run = Reference(module, Preprocessing()).run(x)
        assert no_signal(run.out32, run.out64) is None, name
