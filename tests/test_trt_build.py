"""TensorRT engine build, tested without TensorRT: the 10/11 dispatch, profiles, the sidecar, and the
build sequence against a fake ``tensorrt`` module that records every call."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import jsonschema
import onnx
import pytest
from helpers import write_onnx, write_qdq_onnx
from onnx import TensorProto, helper
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.environment import GpuInfo
from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError
from segdeploy.runtime.sidecar import EngineSidecar
from segdeploy.runtime.trt_build import (
    BuildPlan,
    build_engine,
    derive_profile,
    network_flags,
    plan_build,
    read_onnx_facts,
    sidecar_path,
    trt_major,
)
from segdeploy.schemas import ENGINE_SIDECAR_SCHEMA, load_schema

GPU = GpuInfo(name="Fake GPU", compute_capability="8.6", memory_gb=24.0)


# --------------------------------------------------------------------------- fixtures
class RecordingEnum:
    """An enum stand-in that logs every attribute lookup, so a test can prove nothing touched a member."""

    def __init__(self, log: list, name: str, **members: Any) -> None:
        self._log, self._name, self._members = log, name, members

    def __getattr__(self, item: str) -> Any:
        if item.startswith("_"):
            raise AttributeError(item)
        self._log.append(("enum", self._name, item))
        if item in self._members:
            return self._members[item]
        raise AttributeError(f"type object '{self._name}' has no attribute '{item}'")


class FakeTensorRT:
    """Just enough of ``tensorrt`` for build_engine: records calls in ``self.calls``."""

    def __init__(
        self,
        version: str = "10.3.0.26",
        *,
        parse_errors: tuple[str, ...] = (),
        plan: bytes | None = b"PLAN",
        cache_matches: bool = True,
    ) -> None:
        self.__version__ = version
        self.calls: list[tuple] = []
        major = int(version.split(".")[0])
        builder_flags = {"TF32": "TF32"} if major >= 11 else {"TF32": "TF32", "FP16": "FP16"}
        self.BuilderFlag = RecordingEnum(self.calls, "BuilderFlag", **builder_flags)
        # The enum value moved: 1 on 10.x, 0 on 11.x.
        self.NetworkDefinitionCreationFlag = RecordingEnum(
            self.calls, "NetworkDefinitionCreationFlag", STRONGLY_TYPED=1 if major == 10 else 0
        )
        self.MemoryPoolType = RecordingEnum(self.calls, "MemoryPoolType", WORKSPACE="WORKSPACE")
        self.parse_errors, self.plan, self.cache_matches = parse_errors, plan, cache_matches
        fake = self

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity: str) -> None:
                fake.calls.append(("Logger", severity))

        self.Logger = Logger
        self.Builder = lambda logger: _FakeBuilder(fake)
        self.OnnxParser = lambda network, logger: _FakeParser(fake)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def find(self, name: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == name]


class _FakeInput:
    name = "input"


class _FakeNetwork:
    num_inputs = 1

    def get_input(self, index: int) -> _FakeInput:
        return _FakeInput()


class _FakeParser:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        self.num_errors = len(fake.parse_errors)

    def parse_from_file(self, path: str) -> bool:
        self.fake.calls.append(("parse_from_file", path))
        return not self.fake.parse_errors

    def get_error(self, index: int) -> str:
        return self.fake.parse_errors[index]


class _FakeProfile:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake

    def set_shape(self, name, lo, opt, hi) -> None:
        self.fake.calls.append(("set_shape", name, tuple(lo), tuple(opt), tuple(hi)))


class _FakeCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+tuned"


class _FakeConfig:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        self.cache: _FakeCache | None = None

    def set_memory_pool_limit(self, pool, size) -> None:
        self.fake.calls.append(("set_memory_pool_limit", pool, size))

    def set_flag(self, flag) -> None:
        self.fake.calls.append(("set_flag", flag))

    def clear_flag(self, flag) -> None:
        self.fake.calls.append(("clear_flag", flag))

    def add_optimization_profile(self, profile) -> int:
        self.fake.calls.append(("add_optimization_profile",))
        return 0

    def create_timing_cache(self, data: bytes) -> _FakeCache:
        self.fake.calls.append(("create_timing_cache", bytes(data)))
        return _FakeCache(bytes(data))

    def set_timing_cache(self, cache: _FakeCache, ignore_mismatch: bool) -> bool:
        self.fake.calls.append(("set_timing_cache", cache.data, ignore_mismatch))
        if cache.data and not self.fake.cache_matches:
            return False
        self.cache = cache
        return True

    def get_timing_cache(self) -> _FakeCache:
        assert self.cache is not None
        return self.cache


class _FakeBuilder:
    def __init__(self, fake: FakeTensorRT) -> None:
        self.fake = fake
        fake.calls.append(("Builder",))

    def create_network(self, flags: int) -> _FakeNetwork:
        self.fake.calls.append(("create_network", flags))
        return _FakeNetwork()

    def create_builder_config(self) -> _FakeConfig:
        return _FakeConfig(self.fake)

    def create_optimization_profile(self) -> _FakeProfile:
        return _FakeProfile(self.fake)

    def build_serialized_network(self, network, config) -> bytes | None:
        self.fake.calls.append(("build_serialized_network",))
        return self.fake.plan


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake TensorRT (pass the version) and a fake CUDA GPU."""

    def install(version: str = "10.3.0.26", **kwargs: Any) -> FakeTensorRT:
        fake = FakeTensorRT(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr("segdeploy.environment.cuda_device", lambda: GPU)
        return fake

    return install


# --------------------------------------------------------------------------- plan_build: the 10/11 dispatch
# (trt_major, onnx precision, requested) -> (engine precision, strongly_typed, STRONGLY_TYPED bit, FP16 flag)
PLANS = [
    (10, "fp32", None, ("fp32", False, False, False)),
    (10, "fp32", "fp32", ("fp32", False, False, False)),
    (10, "fp32", "fp16", ("fp16", False, False, True)),
    (10, "fp16", None, ("fp16", True, True, False)),
    (10, "fp16", "fp16", ("fp16", True, True, False)),
    (11, "fp32", None, ("fp32", True, False, False)),
    (11, "fp32", "fp32", ("fp32", True, False, False)),
    (11, "fp16", None, ("fp16", True, False, False)),
    (11, "fp16", "fp16", ("fp16", True, False, False)),
    (12, "fp16", "fp16", ("fp16", True, False, False)),
    # Q/DQ (explicit quantization): strongly typed on both lines, no precision flag ever.
    (10, "int8", None, ("int8", True, True, False)),
    (10, "int8", "int8", ("int8", True, True, False)),
    (10, "int8-fp16", None, ("int8-fp16", True, True, False)),
    (10, "int8-fp16", "int8-fp16", ("int8-fp16", True, True, False)),
    (11, "int8", None, ("int8", True, False, False)),
    (11, "int8", "int8", ("int8", True, False, False)),
    (11, "int8-fp16", None, ("int8-fp16", True, False, False)),
    (12, "int8-fp16", "int8-fp16", ("int8-fp16", True, False, False)),
]


@pytest.mark.parametrize("major, onnx_precision, requested, expected", PLANS)
def test_plan_build_picks_typing_and_flags_per_tensorrt_line(major, onnx_precision, requested, expected):
    plan = plan_build(major, onnx_precision, requested)
    assert (plan.precision, plan.strongly_typed, plan.strongly_typed_flag, plan.fp16_flag) == expected
    assert not (plan.fp16_flag and plan.strongly_typed), "FP16 flag + strong typing fails the build"
    assert plan.strict_fp32 == (plan.precision == "fp32")
    assert plan.explicit_quantization == plan.precision.startswith("int8")


@pytest.mark.parametrize("major", [11, 12])
def test_plan_build_refuses_fp16_from_fp32_onnx_on_tensorrt_11(major):
    with pytest.raises(UserInputError, match=r"--precision fp16"):
        plan_build(major, "fp32", "fp16")


@pytest.mark.parametrize("major", [10, 11])
def test_plan_build_refuses_fp32_engine_from_fp16_onnx(major):
    with pytest.raises(UserInputError, match="FP16 weights"):
        plan_build(major, "fp16", "fp32")


def test_plan_build_refuses_tensorrt_older_than_10_and_bad_precision():
    with pytest.raises(MissingDependencyError, match="10.3"):
        plan_build(8, "fp32", None)
    with pytest.raises(UserInputError, match="choose fp32, fp16, int8, int8-fp16"):
        plan_build(10, "fp32", "int4")


# (ONNX precision, requested) -> the one-line refusal, the same on every TensorRT line.
QUANTIZATION_REFUSALS = [
    ("fp32", "int8", r"no QuantizeLinear/DequantizeLinear nodes.*--precision int8 --calib PATH"),
    ("fp16", "int8", r"no QuantizeLinear/DequantizeLinear nodes.*--precision int8 --calib PATH"),
    ("fp32", "int8-fp16", r"no QuantizeLinear/DequantizeLinear nodes.*--precision int8-fp16 --calib PATH"),
    ("int8", "fp32", r"quantized as int8 .*FP32 elsewhere.*--precision fp32`"),
    ("int8", "fp16", r"quantized as int8 .*--precision fp16`"),
    ("int8", "int8-fp16", r"quantized as int8 .*--precision int8-fp16 --calib PATH"),
    ("int8-fp16", "int8", r"quantized as int8-fp16 .*FP16 elsewhere.*--precision int8 --calib PATH"),
    ("int8-fp16", "fp16", r"quantized as int8-fp16 .*--precision fp16`"),
]


@pytest.mark.parametrize("major", [10, 11])
@pytest.mark.parametrize("onnx_precision, requested, message", QUANTIZATION_REFUSALS)
def test_plan_build_refuses_precisions_a_quantized_or_float_onnx_cannot_give(major, onnx_precision, requested, message):
    with pytest.raises(UserInputError, match=message) as info:
        plan_build(major, onnx_precision, requested)
    assert "\n" not in str(info.value)


def test_precision_names_become_the_precision_enum():
    from segdeploy.artifact import Precision
    from segdeploy.runtime.trt_plan import normalize_precision

    assert [normalize_precision(p) for p in ("INT8", "int8_fp16", "INT8+FP16", "float16", None)] == [
        Precision.INT8,
        Precision.INT8_FP16,
        Precision.INT8_FP16,
        Precision.FP16,
        None,
    ]
    assert plan_build(10, "fp16", None).precision is Precision.FP16


def test_onnx_facts_carry_the_typed_metadata(tmp_path):
    from segdeploy.artifact import InputFormat, Metadata, Precision

    meta = {"trace_shape": "1x3x64x96", "in_channels": "3", "input_format": "uint8-nhwc", "precision": "fp16"}
    facts = read_onnx_facts(write_onnx(tmp_path / "f.onnx", dims=("N", "H", "W", 3), metadata=meta))
    assert facts.precision is Precision.FP16 and isinstance(facts.metadata, Metadata)
    assert facts.metadata.preprocessing.input_format is InputFormat.UINT8_NHWC


def test_trt_major_reads_the_version_string():
    assert trt_major(type("M", (), {"__version__": "10.3.0.30"})) == 10
    assert trt_major(type("M", (), {"__version__": "11.0.0.114"})) == 11
    with pytest.raises(MissingDependencyError):
        trt_major(type("M", (), {"__version__": "garbage"}))


def test_network_flags_shift_the_enum_value_never_a_literal():
    fake10, fake11 = FakeTensorRT("10.16.1.11"), FakeTensorRT("11.0.0.114")
    assert network_flags(fake10, plan_build(10, "fp16", None)) == 1 << 1  # STRONGLY_TYPED = 1 on 10.x
    assert network_flags(fake10, plan_build(10, "fp32", "fp16")) == 0
    assert network_flags(fake11, plan_build(11, "fp16", None)) == 0  # always strong on 11.x; flag deprecated
    assert not [c for c in fake11.calls if c[:2] == ("enum", "NetworkDefinitionCreationFlag")]
    assert network_flags(fake11, BuildPlan(11, "fp16", True, True, False, False)) == 1 << 0  # value 0 on 11.x


# --------------------------------------------------------------------------- derive_profile
def test_profile_defaults_come_from_the_trace_shape_and_min_size():
    meta = {"trace_shape": "2x3x64x96", "in_channels": "3", "min_size": "32"}
    p = derive_profile(meta, graph_shape=(None, 3, None, None))
    assert (p.min, p.opt, p.max) == ((1, 3, 32, 32), (2, 3, 64, 96), (4, 3, 128, 192))


def test_profile_keeps_fixed_axes_and_static_models_get_one_shape():
    meta = {"trace_shape": "2x3x64x96"}
    p = derive_profile(meta, graph_shape=(None, 3, 64, 96))
    assert (p.min, p.opt, p.max) == ((1, 3, 64, 96), (2, 3, 64, 96), (4, 3, 64, 96))
    static = derive_profile({}, graph_shape=(1, 3, 224, 224))
    assert static.min == static.opt == static.max == (1, 3, 224, 224)
    with pytest.raises(UserInputError, match="axis 2 is fixed to 224"):
        derive_profile({}, max_shape="1x3x448x448", graph_shape=(1, 3, 224, 224))


def test_profile_user_shapes_win_and_opt_is_clipped_into_them():
    meta = {"trace_shape": "1x3x512x512", "in_channels": "3"}
    p = derive_profile(meta, opt_shape="1x3x256x320", graph_shape=(None, 3, None, None))
    assert (p.min, p.opt, p.max) == ((1, 3, 32, 32), (1, 3, 256, 320), (2, 3, 512, 640))
    clipped = derive_profile(meta, min_shape="1x3x64x64", max_shape="4x3x256x256", graph_shape=(None, 3, None, None))
    assert clipped.opt == (1, 3, 256, 256)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_shape": "1x3x128x128", "opt_shape": "1x3x64x64"}, "height must satisfy min <= opt <= max"),
        ({"opt_shape": "1x4x64x64"}, "axis 1 is fixed to 3"),
        ({"min_shape": "1x3x16x16"}, "at least 32"),
        ({"opt_shape": "1x3x64"}, "NxCxHxW"),
    ],
)
def test_profile_rejects_inconsistent_shapes_clearly(kwargs, message):
    meta = {"trace_shape": "1x3x64x64", "in_channels": "3", "min_size": "32"}
    with pytest.raises(UserInputError, match=message):
        derive_profile(meta, graph_shape=(None, 3, None, None), **kwargs)


def test_profile_without_trace_shape_asks_for_opt_shape():
    with pytest.raises(UserInputError, match="--opt-shape"):
        derive_profile({}, graph_shape=(None, 3, None, None))


# --------------------------------------------------------------------------- reading the ONNX
def test_onnx_facts_read_precision_from_metadata_or_weights(tmp_path):
    fp32 = read_onnx_facts(write_onnx(tmp_path / "a.onnx"))
    assert (fp32.input_name, fp32.input_dims, fp32.precision) == ("input", (None, 3, None, None), "fp32")
    assert read_onnx_facts(write_onnx(tmp_path / "b.onnx", fp16=True)).precision == "fp16"
    tagged = write_onnx(tmp_path / "c.onnx", metadata={"precision": "fp16", "trace_shape": "1x3x32x32"})
    assert read_onnx_facts(tagged).precision == "fp16"


def test_onnx_facts_find_qdq_nodes_with_or_without_metadata(tmp_path):
    import numpy as np
    import onnxruntime as ort

    fp32_qdq = write_qdq_onnx(tmp_path / "q.onnx", metadata={})
    fp16_qdq = write_qdq_onnx(tmp_path / "q16.onnx", fp16=True, metadata={})
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 7), dtype=np.float32)
    for path in (fp32_qdq, fp16_qdq):  # real models ONNX Runtime runs, not just node lists
        (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})
        assert out.shape == (2, 2, 5, 7) and out.dtype == np.float32
    assert read_onnx_facts(fp32_qdq).precision == "int8"
    assert read_onnx_facts(fp16_qdq).precision == "int8-fp16"
    tagged = write_qdq_onnx(tmp_path / "t.onnx", metadata={"precision": "int8", "trace_shape": "1x3x32x32"})
    assert read_onnx_facts(tagged).precision == "int8"
    # A quantized file still tagged with its float precision builds as what its nodes say.
    stale = write_qdq_onnx(tmp_path / "s.onnx", fp16=True, metadata={"precision": "fp16"})
    assert read_onnx_facts(stale).precision == "int8-fp16"


def test_onnx_facts_find_qdq_nodes_inside_subgraphs(tmp_path):
    path = write_onnx(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    branch = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["q", "s"], ["d"])],
        "branch",
        [],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)],
        initializer=[
            helper.make_tensor("q", TensorProto.INT8, [1], [3]),
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]),
        ],
    )
    model.graph.initializer.append(helper.make_tensor("cond", TensorProto.BOOL, [], [True]))
    model.graph.node.append(helper.make_node("If", ["cond"], ["unused"], then_branch=branch, else_branch=branch))
    onnx.save(model, str(path))
    assert read_onnx_facts(path).precision == "int8"


def test_int8_metadata_without_qdq_nodes_is_refused(tmp_path):
    path = write_onnx(tmp_path / "m.onnx", metadata={"precision": "int8", "trace_shape": "1x3x32x32"})
    with pytest.raises(
        UserInputError, match=r"says precision int8 but has no QuantizeLinear.*--precision int8 --calib PATH"
    ):
        read_onnx_facts(path)


def test_onnx_facts_refuse_random_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UserInputError, match="not .*ONNX model"):
        read_onnx_facts(junk)
    good = write_onnx(tmp_path / "good.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserInputError, match="ONNX model"):
        read_onnx_facts(cut)


# --------------------------------------------------------------------------- the build sequence (fake TensorRT)
def test_tensorrt10_fp32_onnx_fp16_build_uses_weak_typing_and_the_fp16_flag(tmp_path, fake_trt):
    fake = fake_trt("10.3.0.26")
    onnx_path = write_onnx(tmp_path / "m.onnx")
    messages: list[str] = []
    result = build_engine(onnx_path, precision="fp16", workspace_gb=2, progress=messages.append)
    assert fake.find("create_network") == [("create_network", 0)]
    assert fake.find("set_flag") == [("set_flag", "FP16")]
    assert fake.find("clear_flag") == []  # TF32 may stay on for an FP16 engine
    assert fake.find("set_memory_pool_limit") == [("set_memory_pool_limit", "WORKSPACE", 2 << 30)]
    assert fake.find("set_shape") == [("set_shape", "input", (1, 3, 32, 32), (2, 3, 64, 96), (4, 3, 128, 192))]
    order = fake.names()
    assert order.index("parse_from_file") < order.index("set_shape") < order.index("build_serialized_network")
    assert result.engine_path == tmp_path / "m.engine" and result.engine_path.read_bytes() == b"PLAN"
    assert any("building fp16 engine" in m for m in messages)


def test_sidecar_records_versions_gpu_profile_and_hashes(tmp_path, fake_trt):
    fake_trt("10.3.0.26")
    onnx_path = write_onnx(tmp_path / "m.onnx")
    result = build_engine(onnx_path, tmp_path / "out.engine", opt_shape="1x3x64x64")
    side = json.loads(sidecar_path(tmp_path / "out.engine").read_text())
    assert side == result.sidecar.to_dict() and EngineSidecar.read(tmp_path / "out.engine") == result.sidecar
    jsonschema.validate(side, load_schema(ENGINE_SIDECAR_SCHEMA), cls=jsonschema.Draft202012Validator)
    assert side["tensorrt_version"] == "10.3.0.26"
    assert (side["gpu_name"], side["compute_capability"]) == ("Fake GPU", "8.6")
    assert side["precision"] == "fp32" and side["strongly_typed"] is False and side["tf32"] is False
    assert side["onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    assert side["engine_sha256"] == hashlib.sha256(b"PLAN").hexdigest()
    assert side["profile"] == {"min": [1, 3, 32, 32], "opt": [1, 3, 64, 64], "max": [2, 3, 128, 128]}
    assert side["segdeploy_version"] and side["build_seconds"] >= 0 and side["input_name"] == "input"


def test_fp32_engine_clears_tf32_for_strict_fp32(tmp_path, fake_trt):
    fake = fake_trt("10.3.0.26")
    build_engine(write_onnx(tmp_path / "m.onnx"))
    assert fake.find("clear_flag") == [("clear_flag", "TF32")]
    assert fake.find("set_flag") == []


def test_tensorrt10_fp16_onnx_builds_strongly_typed_without_fp16_flag(tmp_path, fake_trt):
    fake = fake_trt("10.3.0.26")
    result = build_engine(write_onnx(tmp_path / "m.onnx", fp16=True))
    assert fake.find("create_network") == [("create_network", 1 << 1)]
    assert fake.find("set_flag") == []
    assert ("enum", "BuilderFlag", "FP16") not in fake.calls
    assert result.sidecar.precision.value == "fp16" and result.sidecar.strongly_typed is True


def test_tensorrt11_fp16_onnx_builds_fp16_and_never_touches_the_removed_flag(tmp_path, fake_trt):
    fake = fake_trt("11.0.0.114")
    result = build_engine(write_onnx(tmp_path / "m.onnx", fp16=True), precision="fp16")
    assert ("enum", "BuilderFlag", "FP16") not in fake.calls  # not even a hasattr probe
    assert fake.find("set_flag") == []
    assert fake.find("create_network") == [("create_network", 0)]
    assert result.sidecar.precision.value == "fp16" and result.sidecar.strongly_typed is True


def test_tensorrt11_fp32_onnx_with_fp16_request_is_an_error_not_a_silent_fp32_engine(tmp_path, fake_trt):
    fake = fake_trt("11.0.0.114")
    onnx_path = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(UserInputError, match="--precision fp16"):
        build_engine(onnx_path, precision="fp16")
    assert "Builder" not in fake.names() and ("enum", "BuilderFlag", "FP16") not in fake.calls
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


@pytest.mark.parametrize("version, bits", [("10.3.0.26", 1 << 1), ("11.0.0.114", 0)])
@pytest.mark.parametrize("fp16", [False, True])
def test_qdq_onnx_builds_strongly_typed_with_no_precision_flag(tmp_path, fake_trt, version, bits, fp16):
    fake = fake_trt(version)
    result = build_engine(write_qdq_onnx(tmp_path / "q.onnx", fp16=fp16), opt_shape="1x3x64x64")
    assert fake.find("create_network") == [("create_network", bits)]
    assert fake.find("set_flag") == [] and fake.find("clear_flag") == []
    assert not [c for c in fake.calls if c[:2] == ("enum", "BuilderFlag")]  # not even a probe of INT8/FP16
    assert fake.find("set_shape") == [("set_shape", "input", (1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128))]
    side = json.loads(sidecar_path(tmp_path / "q.engine").read_text())
    assert side["precision"] == ("int8-fp16" if fp16 else "int8")
    assert side["strongly_typed"] is True and side["explicit_quantization"] is True
    assert side["fp16_builder_flag"] is False and result.plan.explicit_quantization


def test_int8_from_a_float_onnx_is_refused_in_one_line_before_looking_for_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT here: the input error still comes first
    onnx_path = write_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["build", str(onnx_path), "--precision", "int8"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no QuantizeLinear/DequantizeLinear nodes" in lines[0]
    assert "`segdeploy export MODEL --precision int8 --calib PATH`" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_cli_summary_names_qdq_int8(tmp_path, fake_trt):
    fake_trt("10.3.0.26")
    result = CliRunner().invoke(app, ["build", str(write_qdq_onnx(tmp_path / "q.onnx")), "--precision", "INT8"])
    assert result.exit_code == 0, result.output
    assert "int8 (strongly typed, Q/DQ)" in result.stdout


def test_parse_errors_become_one_message_and_no_file(tmp_path, fake_trt):
    fake_trt("10.3.0.26", parse_errors=("In node 3 (Foo): UNSUPPORTED_NODE: no importer\nfor op Foo", "second"))
    onnx_path = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(UserInputError) as info:
        build_engine(onnx_path)
    message = str(info.value)
    assert "no importer for op Foo; second" in message and "\n" not in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_failed_build_returning_none_is_an_error_and_writes_nothing(tmp_path, fake_trt):
    fake_trt("10.3.0.26", plan=None)
    onnx_path = write_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    with pytest.raises(SegdeployError, match="could not build an engine"):
        build_engine(onnx_path, timing_cache=cache)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_timing_cache_is_loaded_strictly_and_saved_after_the_build(tmp_path, fake_trt):
    fake = fake_trt("10.3.0.26")
    onnx_path = write_onnx(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OLD")
    result = build_engine(onnx_path, timing_cache=cache)
    assert fake.find("create_timing_cache") == [("create_timing_cache", b"OLD")]
    assert fake.find("set_timing_cache") == [("set_timing_cache", b"OLD", False)]
    assert cache.read_bytes() == b"OLD+tuned" and result.timing_cache_path == cache


def test_mismatched_timing_cache_is_replaced_by_a_fresh_one(tmp_path, fake_trt):
    fake = fake_trt("10.3.0.26", cache_matches=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"FOREIGN")
    messages: list[str] = []
    build_engine(write_onnx(tmp_path / "m.onnx"), timing_cache=cache, progress=messages.append)
    assert [c[1] for c in fake.find("set_timing_cache")] == [b"FOREIGN", b""]
    assert any("another GPU or TensorRT build" in m for m in messages)
    assert cache.read_bytes() == b"+tuned"


def test_missing_gpu_is_a_missing_dependency(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("10.3.0.26"))
    monkeypatch.setattr("segdeploy.environment.cuda_device", lambda: None)
    with pytest.raises(MissingDependencyError, match="GPU"):
        build_engine(write_onnx(tmp_path / "m.onnx"))
    assert not (tmp_path / "m.engine").exists()


# --------------------------------------------------------------------------- CLI
def test_build_cli_without_tensorrt_says_so_in_one_line_exit_5(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail
    onnx_path = write_onnx(tmp_path / "m.onnx")
    result = CliRunner().invoke(app, ["build", str(onnx_path), "-o", str(tmp_path / "m.engine")])
    assert result.exit_code == 5
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "TensorRT is not installed" in lines[0] and "pip install segdeploy[gpu]" in lines[0]
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_cli_refuses_non_onnx_input_before_looking_for_tensorrt(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    junk = tmp_path / "m.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 100)
    result = CliRunner().invoke(app, ["build", str(junk)])
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "not" in result.stderr and "ONNX" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_cli_prints_a_summary(tmp_path, fake_trt):
    fake_trt("11.0.0.114")
    onnx_path = write_onnx(tmp_path / "m.onnx", fp16=True)
    result = CliRunner().invoke(app, ["build", str(onnx_path), "--opt-shape", "1x3x64x64"])
    assert result.exit_code == 0, result.output
    assert "fp16 (strongly typed)" in result.stdout and "TensorRT 11.0.0.114" in result.stdout
    assert "min 1x3x32x32, opt 1x3x64x64, max 2x3x128x128" in result.stdout
    assert (tmp_path / "m.engine").read_bytes() == b"PLAN"


@pytest.mark.parametrize("blocked", ["engine", "sidecar", "timing cache"])
def test_build_cli_refuses_an_output_path_that_is_a_directory_before_any_tensorrt_work(tmp_path, fake_trt, blocked):
    fake = fake_trt("10.3.0.26")
    onnx_path = write_onnx(tmp_path / "m.onnx")
    engine, cache = tmp_path / "out.engine", tmp_path / "timing.cache"
    directory = {"engine": engine, "sidecar": tmp_path / "out.engine.json", "timing cache": cache}[blocked]
    directory.mkdir()
    result = CliRunner().invoke(app, ["build", str(onnx_path), "-o", str(engine), "--timing-cache", str(cache)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot write {directory}: it is a directory" in lines[0]
    assert fake.calls == []  # not even a Logger: refused before TensorRT
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.onnx", directory.name])


def test_build_refuses_outputs_that_overwrite_the_onnx_or_each_other(tmp_path, fake_trt):
    fake = fake_trt("10.3.0.26")
    onnx_path = write_onnx(tmp_path / "m.onnx")
    with pytest.raises(UserInputError, match="engine path .* would overwrite the ONNX"):
        build_engine(onnx_path, onnx_path)
    with pytest.raises(UserInputError, match="timing cache path .* would overwrite the ONNX"):
        build_engine(onnx_path, tmp_path / "m.engine", timing_cache=onnx_path)
    with pytest.raises(UserInputError, match="would overwrite the engine or its sidecar"):
        build_engine(onnx_path, tmp_path / "m.engine", timing_cache=tmp_path / "m.engine.json")
    with pytest.raises(UserInputError, match="directory .*nowhere does not exist"):
        build_engine(onnx_path, tmp_path / "nowhere" / "m.engine")
    assert fake.calls == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_profile_sizes_follow_the_models_size_multiple():
    from segdeploy.runtime.trt_plan import derive_profile

    metadata = {"trace_shape": "1x3x96x64", "in_channels": "3", "min_size": "32", "size_multiple": "32"}
    profile = derive_profile(metadata)
    for shape in (profile.min, profile.opt, profile.max):
        assert shape[2] % 32 == 0 and shape[3] % 32 == 0 and min(shape[2:]) >= 32
    with pytest.raises(UserInputError, match="multiples of 32"):
        derive_profile(metadata, min_shape="1x3x33x33")


def test_profile_of_a_raw_frame_file_is_in_nhwc():
    from segdeploy.runtime.trt_plan import derive_profile

    metadata = {"trace_shape": "1x3x64x96", "in_channels": "3", "min_size": "32", "input_format": "uint8-nhwc"}
    profile = derive_profile(metadata, graph_shape=(None, None, None, 3))
    assert profile.opt == (1, 64, 96, 3) and profile.min[3] == profile.max[3] == 3
