"""``segdeploy doctor`` and the environment report it prints."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.environment import GpuInfo, available_engines, collect_environment


@pytest.fixture(scope="module")
def env():
    return collect_environment()


def test_environment_reports_installed_libraries_and_cpu(env):
    import onnx
    import torch

    assert env["torch"] == torch.__version__ and env["onnx"] == onnx.__version__
    assert env["cpu"]["cores"] >= 1 and env["cpu"]["model"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    json.dumps(env)  # the bench report stores it as JSON


def test_environment_tolerates_missing_tensorrt_and_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr("segdeploy.environment.cuda_device", lambda: None)
    env = collect_environment()
    assert env["tensorrt"] is None and "TensorRT" in env["tensorrt_error"]
    assert env["cuda"]["available"] is False and env["cuda"]["reason"]
    engines = available_engines(env)
    assert engines["torch"].startswith("yes") and engines["ort"].startswith("yes (")
    assert engines["trt"].startswith("no: ") and "pip install segdeploy[gpu]" in engines["trt"]


def test_trt_engine_is_usable_with_tensorrt_and_a_gpu(monkeypatch):
    fake_trt = type("FakeTensorRT", (), {"__version__": "11.0.0.114"})()
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    monkeypatch.setattr("segdeploy.environment.cuda_device", lambda: GpuInfo("Fake GPU", "9.0", 80.0))
    monkeypatch.setattr("segdeploy.environment._nvidia_driver_version", lambda: "575.57")
    env = collect_environment()
    assert env["cuda"]["driver"] == "575.57" and env["cuda"]["compute_capability"] == "9.0"
    engines = available_engines(env)
    assert engines["trt"] == "yes (TensorRT 11.0.0.114 on Fake GPU, compute 9.0)"
    assert engines["torch"] == "yes (cpu, cuda: Fake GPU)"


def test_doctor_prints_versions_and_engines(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    for word in ("torch", "onnxruntime", "tensorrt", "engines", "segdeploy[gpu]"):
        assert word in result.stdout


def test_doctor_json_is_machine_readable(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["engines"]) == {"torch", "ort", "trt"} and data["tensorrt"] is None
