"""TensorRT runner: compatibility refusal and profile checks without TensorRT; real engines under ``-m trt``."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segdeploy.artifact import InputFormat, Precision
from segdeploy.environment import GpuInfo
from segdeploy.errors import MissingDependencyError, UserInputError
from segdeploy.runtime.sidecar import EngineLoadFacts, EngineSidecar, ProfileShapes, sidecar_path
from segdeploy.runtime.trt_runner import TrtRunner, check_engine_compatible, check_in_profile

GPU = GpuInfo(name="Fake GPU", compute_capability="8.6", memory_gb=24.0)
PLAN = b"SERIALIZED-ENGINE"


class FakeRuntimeModule:
    """``tensorrt`` stand-in for loading: records Runtime creation and deserialization."""

    def __init__(self, version: str = "10.3.0.26", engine=None) -> None:
        self.__version__ = version
        self.calls: list[tuple] = []
        fake = self

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity) -> None:
                pass

        class Runtime:
            def __init__(self, logger) -> None:
                fake.calls.append(("Runtime",))

            def deserialize_cuda_engine(self, plan) -> object:
                fake.calls.append(("deserialize_cuda_engine", bytes(plan)))
                return engine

        self.Logger, self.Runtime = Logger, Runtime


SIDECAR = EngineSidecar(
    tensorrt_version="10.3.0.26",
    gpu_name="Fake GPU",
    compute_capability="8.6",
    precision=Precision.FP16,
    input_name="input",
    input_format=InputFormat.FLOAT32_NCHW,
    profile=ProfileShapes((1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128)),
    onnx_path="m.onnx",
    onnx_sha256="0" * 64,
    engine_sha256=hashlib.sha256(PLAN).hexdigest(),
    strongly_typed=True,
    fp16_builder_flag=False,
    explicit_quantization=False,
    tf32=True,
    workspace_gb=1.0,
    timing_cache=None,
    build_seconds=1.0,
    built_at="2026-01-01T00:00:00+0000",
    segdeploy_version="0.1.0",
)


def write_engine(tmp_path: Path, **sidecar_overrides) -> Path:
    """Plan bytes and their sidecar, written by the sidecar's one writer."""
    engine = tmp_path / "m.engine"
    engine.write_bytes(PLAN)
    dataclasses.replace(SIDECAR, **sidecar_overrides).write(engine)
    return engine


@pytest.fixture
def fake_runtime(monkeypatch):
    def install(version: str = "10.3.0.26", engine=None) -> FakeRuntimeModule:
        fake = FakeRuntimeModule(version, engine)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr("segdeploy.environment.cuda_device", lambda: GPU)
        return fake

    return install


# --------------------------------------------------------------------------- pure checks
def test_compatible_engine_passes_the_check(tmp_path):
    engine = write_engine(tmp_path)
    check_engine_compatible(
        EngineSidecar.read(engine).load_facts(),
        engine_path=engine,
        engine_sha256=hashlib.sha256(PLAN).hexdigest(),
        trt_version="10.3.0.26",
        compute_capability="8.6",
    )


@pytest.mark.parametrize(
    "here, message",
    [
        (
            {"trt_version": "11.0.0.114"},
            r"built with TensorRT 10\.3\.0\.26 but this machine has TensorRT 11\.0\.0\.114",
        ),
        ({"compute_capability": "7.5"}, r"compute capability 8\.6 \(Fake GPU\) but this GPU is compute 7\.5"),
        ({"engine_sha256": "0" * 64}, "sha256 differs"),
    ],
)
def test_engine_from_another_tensorrt_or_gpu_is_refused_with_both_sides_named(tmp_path, here, message):
    engine = write_engine(tmp_path)
    sidecar = EngineSidecar.read(engine).load_facts()
    facts = {
        "engine_sha256": hashlib.sha256(PLAN).hexdigest(),
        "trt_version": "10.3.0.26",
        "compute_capability": "8.6",
        **here,
    }
    with pytest.raises(UserInputError, match=message) as info:
        check_engine_compatible(sidecar, engine_path=engine, **facts)
    assert "segdeploy build" in str(info.value) or "sidecar" in str(info.value)


def test_shapes_outside_the_profile_are_rejected_naming_the_range():
    check_in_profile((2, 3, 64, 64), (1, 3, 32, 32), (4, 3, 128, 128))
    with pytest.raises(UserInputError, match=r"1x3x256x64 is outside .*from 1x3x32x32 to 4x3x128x128"):
        check_in_profile((1, 3, 256, 64), (1, 3, 32, 32), (4, 3, 128, 128), "input")
    with pytest.raises(UserInputError, match="outside"):
        check_in_profile((1, 3, 64), (1, 3, 32, 32), (4, 3, 128, 128))


def test_engine_io_puts_logits_first_and_maps_fp16_outputs():
    import torch

    from segdeploy.runtime.trt_runner import _describe_io

    trt = SimpleNamespace(
        DataType=SimpleNamespace(FLOAT="f32", HALF="f16"), TensorIOMode=SimpleNamespace(INPUT="in", OUTPUT="out")
    )
    tensors = {"input": ("in", "f32"), "side1": ("out", "f32"), "logits": ("out", "f16")}
    engine = SimpleNamespace(
        num_io_tensors=3,
        get_tensor_name=lambda i: list(tensors)[i],
        get_tensor_mode=lambda n: tensors[n][0],
        get_tensor_dtype=lambda n: tensors[n][1],
        get_tensor_profile_shape=lambda n, k: [(1, 3, 16, 16), (2, 3, 64, 64), (2, 3, 96, 96)],
    )
    io = _describe_io(trt, engine, Path("m.engine"))
    assert io.input_name == "input" and io.input_dtype == torch.float32
    assert io.outputs == (("logits", torch.float16), ("side1", torch.float32))
    assert (io.profile.min, io.profile.max) == ((1, 3, 16, 16), (2, 3, 96, 96))


# --------------------------------------------------------------------------- loading with a fake TensorRT
def test_runner_refuses_a_foreign_engine_before_deserializing(tmp_path, fake_runtime):
    fake = fake_runtime("11.0.0.114")
    runner = TrtRunner(write_engine(tmp_path))
    with pytest.raises(UserInputError, match="built with TensorRT 10.3.0.26"):
        runner.activate()
    assert fake.calls == []  # no Runtime, no deserialize_cuda_engine


def test_runner_reports_an_engine_tensorrt_cannot_load(tmp_path, fake_runtime):
    fake = fake_runtime("10.3.0.26", engine=None)
    engine = tmp_path / "bare.engine"
    engine.write_bytes(PLAN)  # no sidecar: nothing to check, TensorRT decides
    with pytest.raises(UserInputError, match=r"could not load .*bare\.engine .*no sidecar"):
        TrtRunner(engine).activate()
    assert ("deserialize_cuda_engine", PLAN) in fake.calls


def test_runner_precision_label_comes_from_the_sidecar(tmp_path):
    engine = write_engine(tmp_path, precision=Precision.FP32)
    assert TrtRunner(engine).label == "trt-fp32"
    assert TrtRunner(engine, precision="fp16").label == "trt-fp16"


def test_runner_refuses_a_sidecar_that_is_not_a_complete_segdeploy_sidecar_in_one_line(tmp_path):
    engine = write_engine(tmp_path)
    sidecar_path(engine).write_text('{"tensorrt_version": "10.3.0.26", "compute_capability": "8.6"}')
    with pytest.raises(UserInputError, match=r"m\.engine\.json is not a segdeploy engine sidecar") as info:
        TrtRunner(engine)
    assert "\n" not in str(info.value)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(UserInputError, match=r"cannot read .*m\.engine\.json"):
        TrtRunner(engine)


def test_facts_given_to_the_runner_replace_the_sidecar_and_are_checked_before_deserializing(tmp_path, fake_runtime):
    engine = tmp_path / "model.plan"
    engine.write_bytes(PLAN)  # a bundle's plan: no sidecar, its facts come from the manifest
    facts = EngineLoadFacts("10.3.0.26", "Orin", "8.7", Precision.INT8, InputFormat.UINT8_NHWC)
    runner = TrtRunner(engine, facts=facts)
    assert runner.facts == facts and runner.label == "trt-int8"
    fake = fake_runtime("10.3.0.26")
    with pytest.raises(UserInputError, match=r"compute capability 8\.7 \(Orin\) but this GPU is compute 8\.6"):
        runner.activate()
    assert fake.calls == []


def test_runner_without_tensorrt_is_a_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        TrtRunner(write_engine(tmp_path)).activate()


def test_runner_on_a_missing_engine_file_says_so(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        TrtRunner(tmp_path / "nope.engine").activate()


# --------------------------------------------------------------------------- real TensorRT + CUDA GPU
@pytest.fixture(scope="module")
def trt_module():
    """Skip (before any export work) unless TensorRT imports and a CUDA GPU is visible."""
    trt = pytest.importorskip("tensorrt")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return trt


@pytest.fixture(scope="module")
def tiny_onnx(trt_module, tmp_path_factory):
    """A small conv net exported with dynamic N/H/W, as FP32 and FP16 (float32 I/O) ONNX, plus the module."""
    import onnx
    import torch
    from onnx import helper
    from onnxconverter_common import float16
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 5, 1),
    )
    with torch.no_grad():  # BatchNorm statistics from data, so activations have trained-like scale
        model.train()
        model(torch.randn(8, 3, 64, 64))
    model.eval()
    root = tmp_path_factory.mktemp("trt")
    fp32_path, fp16_path = root / "tiny.onnx", root / "tiny_fp16.onnx"
    axes = {0: "N", 2: "H", 3: "W"}
    torch.onnx.export(
        model,
        torch.randn(2, 3, 64, 64),
        str(fp32_path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": axes, "logits": axes},
        opset_version=17,
        dynamo=False,
    )
    fp32 = onnx.load(str(fp32_path))
    meta = {"trace_shape": "2x3x64x64", "in_channels": "3", "min_size": "16"}
    helper.set_model_props(fp32, {**meta, "precision": "fp32"})
    onnx.save(fp32, str(fp32_path))
    fp16 = float16.convert_float_to_float16(fp32, keep_io_types=True)
    helper.set_model_props(fp16, {**meta, "precision": "fp16"})
    onnx.save(fp16, str(fp16_path))
    return model, fp32_path, fp16_path


PROFILE = {"min_shape": "1x3x16x16", "opt_shape": "2x3x64x64", "max_shape": "2x3x96x96"}
SHAPES = [(1, 3, 64, 64), (2, 3, 45, 61), (1, 3, 17, 33)]  # the traced size, odd sizes, batch 2


def _compare(runner, model, shapes):
    import torch

    for shape in shapes:
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        out = runner.infer(x)
        assert out.shape == ref.shape and out.dtype == np.float32
        yield shape, ref, out


@pytest.mark.trt
def test_fp16_engine_matches_pytorch_at_several_shapes(tiny_onnx, tmp_path):
    from segdeploy.runtime.trt_build import build_engine

    model, _, fp16_path = tiny_onnx
    result = build_engine(fp16_path, tmp_path / "fp16.engine", **PROFILE)
    assert result.sidecar.precision.value == "fp16" and result.sidecar.strongly_typed is True
    with TrtRunner(result.engine_path) as runner:
        for shape, ref, out in _compare(runner, model, SHAPES):
            relative = np.abs(out - ref).max() / np.abs(ref).max()
            agreement = (out.argmax(1) == ref.argmax(1)).mean()
            assert relative < 1e-2 and agreement > 0.99, (shape, relative, agreement)


@pytest.mark.trt
def test_fp32_engine_matches_pytorch_tightly_and_times_like_trtexec(tiny_onnx, tmp_path):
    from segdeploy.runtime.trt_build import build_engine

    model, fp32_path, _ = tiny_onnx
    result = build_engine(fp32_path, tmp_path / "fp32.engine", timing_cache=tmp_path / "t.cache", **PROFILE)
    assert result.sidecar.tf32 is False and (tmp_path / "t.cache").stat().st_size > 0
    with TrtRunner(result.engine_path) as runner:
        for shape, ref, out in _compare(runner, model, SHAPES):
            assert np.abs(out - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max()), shape
        x = np.zeros((2, 3, 64, 64), np.float32)
        for graph in (False, True):
            times = runner.gpu_compute_ms(x, warmup=2, iters=5, cuda_graph=graph)
            assert len(times) == 5 and all(t > 0 for t in times)
        assert len(runner.end_to_end_ms(x, warmup=1, iters=3)) == 3
        runner.prepare(x)()


@pytest.mark.trt
def test_tensorrt10_builds_fp16_from_fp32_onnx_with_the_builder_flag(trt_module, tiny_onnx, tmp_path):
    if int(trt_module.__version__.split(".")[0]) != 10:
        pytest.skip("the FP16 builder flag exists only on TensorRT 10.x")
    from segdeploy.runtime.trt_build import build_engine

    model, fp32_path, _ = tiny_onnx
    result = build_engine(fp32_path, tmp_path / "flag.engine", precision="fp16", **PROFILE)
    assert result.sidecar.fp16_builder_flag is True and result.sidecar.strongly_typed is False
    with TrtRunner(result.engine_path) as runner:
        for shape, ref, out in _compare(runner, model, SHAPES[:2]):
            assert np.abs(out - ref).max() / np.abs(ref).max() < 1e-2, shape


@pytest.mark.trt
def test_int8_qdq_engine_agrees_with_onnx_runtime_on_the_same_quantized_file(tiny_onnx, tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import helper
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from segdeploy.runtime.trt_build import build_engine

    _, fp32_path, _ = tiny_onnx
    rng = np.random.default_rng(2)

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": rng.standard_normal((2, 3, 64, 64), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.batches, None)

    qdq_path = tmp_path / "tiny_int8.onnx"
    # TensorRT-safe settings: symmetric int8, per-channel weights, Conv inputs only, biases left in float.
    quantize_static(
        str(fp32_path),
        str(qdq_path),
        Batches(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["Conv"],
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    model = onnx.load(str(qdq_path))
    helper.set_model_props(
        model, {"trace_shape": "2x3x64x64", "in_channels": "3", "min_size": "16", "precision": "int8"}
    )
    onnx.save(model, str(qdq_path))
    result = build_engine(qdq_path, tmp_path / "int8.engine", **PROFILE)
    assert result.sidecar.precision.value == "int8" and result.sidecar.explicit_quantization is True
    session = ort.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"])
    with TrtRunner(result.engine_path) as runner:
        for shape in SHAPES:
            x = rng.standard_normal(shape, dtype=np.float32)
            (ref,) = session.run(None, {"input": x})
            out = runner.infer(x)
            assert out.shape == ref.shape
            assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.99, shape


@pytest.mark.trt
def test_real_runner_rejects_shapes_outside_the_profile(tiny_onnx, tmp_path):
    from segdeploy.runtime.trt_build import build_engine

    _, _, fp16_path = tiny_onnx
    result = build_engine(fp16_path, tmp_path / "p.engine", **PROFILE)
    with TrtRunner(result.engine_path) as runner:
        with pytest.raises(UserInputError, match=r"from 1x3x16x16 to 2x3x96x96"):
            runner.infer(np.zeros((1, 3, 128, 64), np.float32))
        with pytest.raises(UserInputError, match="outside"):
            runner.infer(np.zeros((4, 3, 32, 32), np.float32))
