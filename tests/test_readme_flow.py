"""The README's Use commands pass as written: export a zoo model, then verify the file it wrote.

``verify`` rebuilds the model from the file alone: its recorded seed (no checkpoint) or its recorded
checkpoint, checked by sha256. The quick tier runs the flow at a small SegNet (``width_mult`` 0.125,
32x32); the heavy tier runs the README's commands verbatim at the default 512x512.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segdeploy.cli import app

SMALL = ["--config", "width_mult=0.125", "--input-shape", "1x3x32x32"]


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error: ")]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_flow_at_a_small_size_export_then_verify_passes(in_tmp):
    code, output = _cli("export", "segnet", "--opset", "17", *SMALL)
    assert code == 0, output
    # another process: the initial weights must be redrawn identically from the recorded seed alone
    run = subprocess.run(
        [sys.executable, "-m", "segdeploy", "verify", "segnet.onnx", "--report", "parity.json"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads((in_tmp / "parity.json").read_text())
    criteria = [r["criterion"] for r in report["results"]]
    assert report["passed"] is True and criteria.count("noise-floor") == 2 and criteria.count("float32-probe") >= 2
    probed = [int(side) for r in report["results"] for side in r["shape"].split("x")[2:]]
    assert max(probed) >= 64 and min(probed) == 32  # well above the traced 32x32, and its minimum
    assert report["sizes"] == "accepts any height and width, at least 32"


def test_a_weights_export_verifies_without_repeating_weights_and_from_another_directory(in_tmp):
    torch.manual_seed(4)
    from segdeploy.models import create_model

    trained = create_model("segnet", num_classes=21, width_mult=0.125)
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, in_tmp / "w.pt")
    code, output = _cli("export", "segnet", "--opset", "17", *SMALL, "--weights", "w.pt", "-o", "seg.onnx")
    assert code == 0, output
    code, output = _cli("verify", "seg.onnx")
    assert code == 0 and "passed" in output, output
    # the file and its checkpoint move together: found beside the file, by its sha256
    (in_tmp / "deploy").mkdir()
    for name in ("seg.onnx", "w.pt"):
        (in_tmp / name).rename(in_tmp / "deploy" / name)
    code, output = _cli("verify", "deploy/seg.onnx")
    assert code == 0, output
    # the checkpoint changed: one line asking for the right one, not a failed verification
    torch.save(create_model("segnet", num_classes=21, width_mult=0.125).state_dict(), in_tmp / "deploy" / "w.pt")
    code, output = _cli("verify", "deploy/seg.onnx")
    errors = _error_lines(output)
    assert code == 2 and len(errors) == 1 and "has changed since" in errors[0] and "--weights" in errors[0]
    # gone: the same; an explicit --weights decides
    (in_tmp / "deploy" / "w.pt").unlink()
    code, output = _cli("verify", "deploy/seg.onnx")
    assert code == 2 and "no longer there" in output and "--weights" in output and "Traceback" not in output
    torch.save(trained.state_dict(), in_tmp / "plain.pt")
    code, output = _cli("verify", "deploy/seg.onnx", "--weights", "plain.pt")
    assert code == 0, output


def test_a_static_export_says_fixed_and_verifies_at_its_one_shape(in_tmp):
    code, output = _cli("export", "segnet", "--opset", "17", *SMALL, "--static", "--report", "export.json")
    assert code == 0, output
    assert "fixed 1x3x32x32" in output and "accepts any" not in output
    exported = json.loads((in_tmp / "export.json").read_text())
    assert exported["sizes"] == exported["metadata"]["sizes"] == "fixed 1x3x32x32"
    code, output = _cli("verify", "segnet.onnx", "--report", "parity.json")
    assert code == 0, output
    report = json.loads((in_tmp / "parity.json").read_text())
    assert [r["shape"] for r in report["results"]] == ["1x3x32x32"] and report["sizes"] == "fixed 1x3x32x32"
    code, output = _cli("verify", "segnet.onnx", "--shape", "1x3x64x64")
    assert code == 2 and "static" in output and "fixed 1x3x32x32" in output


README = Path(__file__).resolve().parents[1] / "README.md"
SEGDEPLOY = str(Path(sys.executable).with_name("segdeploy"))  # the console script of this environment


def _readme_commands() -> list[str]:
    """The Use section's commands this test runs, exactly as the README writes them."""
    use = README.read_text().split("## Use", 1)[1].split("\n## ", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in use.splitlines()]
    wanted = ("segdeploy export segnet --opset 17", "segdeploy verify segnet.onnx --report parity.json")
    found = [line for line in lines if line in wanted]
    assert found == list(wanted), f"the README's Use section changed: {found}"
    return found


@pytest.mark.slow
def test_the_readme_commands_pass_verbatim(tmp_path):
    for command in _readme_commands():
        argv = re.split(r"\s+", command)
        run = subprocess.run([SEGDEPLOY, *argv[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, f"{command}: {run.stdout[-3000:]} {run.stderr[-3000:]}"
    assert json.loads((tmp_path / "parity.json").read_text())["passed"] is True


@pytest.mark.slow
def test_the_readme_flow_at_the_default_size_with_weights_and_static(tmp_path):
    from segdeploy.models import create_model

    torch.manual_seed(8)
    torch.save(create_model("segnet", num_classes=21).state_dict(), tmp_path / "segnet.pth")
    for export in (["--weights", "segnet.pth", "-o", "w.onnx"], ["--static", "-o", "s.onnx"]):
        run = subprocess.run([SEGDEPLOY, "export", "segnet", "--opset", "17", *export], cwd=tmp_path)
        assert run.returncode == 0, export
        run = subprocess.run([SEGDEPLOY, "verify", export[-1]], cwd=tmp_path, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
