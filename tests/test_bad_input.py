"""Bad input across commands: one clear line, a non-zero exit, no traceback, nothing left behind."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from segdeploy.cli import app

runner = CliRunner()


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    output = result.output
    return result.exit_code, output


def _one_clear_line(output: str, *needles: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert "Traceback" not in output
    for needle in needles:
        assert needle in errors[0], errors[0]


def _conv_onnx(path, *, input_name: str = "input") -> None:
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", [input_name, "w"], ["logits"])],
        "conv",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2, "height", "width"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


@pytest.fixture
def bad_onnx_files(tmp_path):
    good = tmp_path / "good.onnx"
    _conv_onnx(good)
    files = {
        "random bytes": os.urandom(4096),
        "truncated": good.read_bytes()[: len(good.read_bytes()) // 2],
        "empty": b"",
    }
    paths = {}
    for name, data in files.items():
        path = tmp_path / (name.replace(" ", "_") + ".onnx")
        path.write_bytes(data)
        paths[name] = path
    paths["missing"] = tmp_path / "missing.onnx"
    return paths


# --------------------------------------------------------------------------- model names, opsets, shapes
def test_unknown_model_lists_the_known_names(tmp_path):
    code, out = _invoke("export", "segnett", "-o", str(tmp_path / "x.onnx"))
    assert code == 2
    _one_clear_line(out, "unknown model 'segnett'", "did you mean 'segnet'", "fcn8s", "u2net")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("opset", ["12", "21"])
def test_bad_opset_names_the_supported_range(tmp_path, opset):
    code, out = _invoke(
        "export", "unet", "--opset", opset, "--input-shape", "1x3x64x64", "-o", str(tmp_path / "x.onnx")
    )
    assert code == 2
    _one_clear_line(out, "13", "20")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("shape", "needle"),
    [("3x64x64", "NxCxHxW"), ("1x3x16x16", "at least 32"), ("1x3xAx64", "NxCxHxW")],
)
def test_bad_shape_names_the_expected_form_or_minimum(tmp_path, shape, needle):
    code, out = _invoke("export", "unet", "--input-shape", shape, "-o", str(tmp_path / "x.onnx"))
    assert code == 2
    _one_clear_line(out, needle)
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_the_traceback(tmp_path):
    result = runner.invoke(
        app, ["--verbose", "export", "unet", "--input-shape", "3x64x64", "-o", str(tmp_path / "x.onnx")]
    )
    assert result.exit_code == 2
    assert "Traceback" in result.output


# --------------------------------------------------------------------------- checkpoints
def test_malicious_checkpoint_is_refused_and_never_executed(tmp_path, code_running_payload):
    payload, marker = code_running_payload
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": payload}, evil)
    out_file = tmp_path / "x.onnx"
    code, out = _invoke("export", "unet", "--weights", str(evil), "--input-shape", "1x3x64x64", "-o", str(out_file))
    assert code == 2
    _one_clear_line(out, "refused", "would run code")
    assert not marker.exists()
    assert not out_file.exists()


@pytest.mark.parametrize(
    ("content", "needle"), [(b"", "is empty"), (b"not a checkpoint" * 20, "corrupt"), (None, "does not exist")]
)
def test_corrupt_empty_and_missing_checkpoints_are_refused(tmp_path, content, needle):
    ckpt = tmp_path / "ckpt.pt"
    if content is not None:
        ckpt.write_bytes(content)
    code, out = _invoke(
        "export", "unet", "--weights", str(ckpt), "--input-shape", "1x3x64x64", "-o", str(tmp_path / "x.onnx")
    )
    assert code == 2
    _one_clear_line(out, needle)
    assert not (tmp_path / "x.onnx").exists()


def test_checkpoint_for_another_model_names_the_mismatch(tmp_path):
    ckpt = tmp_path / "other.pt"
    torch.save({"model": {"module.not_a_layer.weight": torch.zeros(2, 2)}}, ckpt)
    code, out = _invoke(
        "export", "unet", "--weights", str(ckpt), "--input-shape", "1x3x64x64", "-o", str(tmp_path / "x.onnx")
    )
    assert code == 2
    _one_clear_line(out, "does not fit the model", "missing keys", "unexpected keys: not_a_layer.weight")


# --------------------------------------------------------------------------- output targets
def test_output_in_a_missing_directory_is_a_clear_error(tmp_path):
    code, out = _invoke("export", "unet", "--input-shape", "1x3x64x64", "-o", str(tmp_path / "no" / "x.onnx"))
    assert code == 2
    _one_clear_line(out, "does not exist")


# --------------------------------------------------------------------------- files that are not what they claim
@pytest.mark.parametrize("kind", ["random bytes", "truncated", "empty", "missing"])
@pytest.mark.parametrize(
    "command",
    [("lint",), ("verify", "--model", "unet"), ("build",), ("bench", "--engine", "ort", "--iters", "1")],
    ids=["lint", "verify", "build", "bench"],
)
def test_non_onnx_inputs_are_refused_by_every_command(bad_onnx_files, tmp_path, kind, command):
    before = set(tmp_path.iterdir())
    path = str(bad_onnx_files[kind])
    args = [command[0], path, *command[1:]] if command[0] != "bench" else ["bench", path, *command[1:]]
    code, out = _invoke(*args)
    assert code == 2, out
    _one_clear_line(out)
    assert set(tmp_path.iterdir()) == before


def test_onnx_without_the_expected_input_is_refused(tmp_path):
    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["a", "w"], ["c"]), helper.make_node("Add", ["c", "b"], ["logits"])],
        "two_inputs",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 3, 8, 8]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2, 8, 8]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2, 8, 8])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "two.onnx"
    onnx.save(model, path)
    code, out = _invoke("verify", str(path), "--model", "unet", "--shape", "1x3x64x64")
    assert code == 2
    _one_clear_line(out, "input")


# --------------------------------------------------------------------------- missing TensorRT
def test_build_without_tensorrt_says_what_is_missing_and_writes_nothing(tmp_path):
    pytest.importorskip("onnx")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    onnx_path = tmp_path / "good.onnx"
    _conv_onnx(onnx_path)
    code, out = _invoke("build", str(onnx_path), "--opt-shape", "1x3x64x64", "-o", str(tmp_path / "m.engine"))
    assert code == 5
    _one_clear_line(out, "TensorRT")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.onnx"]


def test_bench_trt_without_tensorrt_exits_5_before_any_work(tmp_path):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    report = str(tmp_path / "r.json")
    code, out = _invoke("bench", "unet", "--engine", "trt", "--shape", "1x3x64x64", "--report", report)
    assert code == 5
    _one_clear_line(out, "TensorRT")
    assert list(tmp_path.iterdir()) == []


def test_doctor_runs_without_optional_parts():
    code, out = _invoke("doctor")
    assert code == 0
    assert "onnxruntime" in out
