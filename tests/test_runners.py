"""Runners: torch and ONNX Runtime agree; bad files and bad batches are refused in one line."""

from __future__ import annotations

import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segdeploy.errors import UserInputError
from segdeploy.runtime import open_runner
from segdeploy.runtime.ort_runner import OrtRunner
from segdeploy.runtime.torch_runner import TorchRunner


class TinySegNet(nn.Module):
    """conv -> relu -> maxpool -> 1x1 conv -> bilinear back to the input size."""

    def __init__(self, num_classes: int = 5, in_channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.classifier = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(F.max_pool2d(F.relu(self.features(x)), 2))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return TinySegNet().eval()


@pytest.fixture(scope="module")
def tiny_onnx(tiny_model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter takes 0.2 s here against ~10 s for dynamo; the runners do not care which.
        torch.onnx.export(
            tiny_model,
            (torch.randn(1, 3, 32, 32),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}},
            opset_version=17,
            dynamo=False,
        )
    return str(path)


def _batch(*shape: int) -> np.ndarray:
    return np.random.default_rng(1).standard_normal(shape, dtype=np.float32)


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (1, 3, 33, 47), (2, 3, 40, 24)])
def test_torch_and_ort_runners_agree_at_traced_odd_and_batch_2_shapes(tiny_model, tiny_onnx, shape):
    batch = _batch(*shape)
    with TorchRunner(tiny_model) as torch_runner, OrtRunner(tiny_onnx, threads=1) as ort_runner:
        expected = torch_runner.infer(batch)
        got = ort_runner.infer(batch)
    assert expected.dtype == got.dtype == np.float32
    assert got.shape == (shape[0], 5, shape[2], shape[3])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_ort_runner_sets_threads_cpu_provider_and_io_names(tiny_onnx):
    batch = _batch(1, 3, 36, 36)
    with OrtRunner(tiny_onnx, threads=1) as runner:
        assert runner.session.get_session_options().intra_op_num_threads == 1
        assert runner.session.get_providers() == ["CPUExecutionProvider"]
        step = runner.prepare(batch)
        step()
        assert runner.label == "ort-fp32"
        assert runner.input_name == "input" and runner.output_name == "logits"


def test_torch_runner_restores_thread_count_and_returns_main_output_of_tuples(tiny_model):
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_model

        def forward(self, x):
            return self.inner(x), torch.zeros(1)

    before = torch.get_num_threads()
    batch = _batch(1, 3, 32, 32)
    with TorchRunner(WithAux(), threads=1) as runner:
        assert torch.get_num_threads() == 1
        out = runner.infer(batch)
    assert torch.get_num_threads() == before
    with torch.no_grad():
        np.testing.assert_array_equal(out, tiny_model(torch.from_numpy(batch)).numpy())


def test_ort_runner_refuses_wrong_channel_count_naming_the_expected_shape(tiny_onnx):
    with OrtRunner(tiny_onnx) as runner, pytest.raises(UserInputError, match=r"1x4x32x32.*expects Nx3xHxW"):
        runner.infer(_batch(1, 4, 32, 32))


def test_runners_refuse_a_batch_that_is_not_rank_4(tiny_model, tiny_onnx):
    with OrtRunner(tiny_onnx) as runner, pytest.raises(UserInputError, match="rank 4"):
        runner.infer(_batch(3, 32, 32))
    with TorchRunner(tiny_model) as runner, pytest.raises(UserInputError, match=r"expects Nx3xHxW"):
        runner.infer(_batch(1, 1, 32, 32))


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "missing"])
def test_ort_runner_refuses_files_that_are_not_onnx_in_one_line(tiny_onnx, tmp_path, kind):
    path = tmp_path / "bad.onnx"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "truncated":
        data = Path(tiny_onnx).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    with pytest.raises(UserInputError) as info, OrtRunner(path):
        pass
    message = str(info.value)
    assert "bad.onnx" in message and "\n" not in message


def test_ort_runner_refuses_a_model_without_an_image_input(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["logits"])],
        "two_inputs",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 8, 8]) for n in ("a", "b")],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), path)
    with pytest.raises(UserInputError, match="inputs a, b; expected one image input named 'input'"), OrtRunner(path):
        pass


def test_open_runner_chooses_by_suffix_and_type(tiny_model, tiny_onnx, tmp_path, monkeypatch):
    assert isinstance(open_runner(tiny_onnx), OrtRunner)
    assert isinstance(open_runner(tiny_model), TorchRunner)
    runner = OrtRunner(tiny_onnx)
    assert open_runner(runner) is runner

    fake = types.ModuleType("segdeploy.runtime.trt_runner")
    fake.TrtRunner = lambda path, **kw: ("trt", str(path), kw)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "segdeploy.runtime.trt_runner", fake)
    assert open_runner(tmp_path / "m.engine")[0] == "trt"
    assert open_runner(tmp_path / "m.plan")[0] == "trt"

    with pytest.raises(UserInputError, match="expected .onnx, .engine or .plan"):
        open_runner(tmp_path / "model.pt")
    with pytest.raises(UserInputError, match="build a TensorRT engine"):
        open_runner(tiny_onnx, runtime="trt")


def test_importing_the_runtime_package_imports_no_backend():
    code = (
        "import sys, segdeploy.runtime, segdeploy.export.lint, segdeploy.verify; "
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'tensorrt') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
