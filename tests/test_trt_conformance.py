"""Every TensorRT call segdeploy makes, checked against the real Python bindings of 10.3, a newer 10.x and 11.4.

No GPU or TensorRT is needed: ``trt_bindings`` imports each version's real ``tensorrt_bindings`` wheel over
stub native libraries, dumps its enums, classes and pybind11 signatures, and builds a fake ``tensorrt`` that
checks method names, argument counts, keywords, enum members and argument types on every call. Skipped (with
the reason) where gcc or the wheel download is unavailable.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import trt_bindings
from helpers import write_onnx, write_qdq_onnx

from segdeploy.environment import GpuInfo
from segdeploy.errors import SegdeployError, UserInputError

GPU = GpuInfo(name="Fake GPU", compute_capability="8.6", memory_gb=24.0)


# The wheels are downloaded on a fresh machine: every test of the real bindings is in the heavy tier.
@pytest.fixture(scope="session", params=[pytest.param(v, marks=pytest.mark.slow) for v in trt_bindings.VERSIONS])
def trt_api(request) -> dict[str, Any]:
    """One real TensorRT version's API (downloaded and dumped once, then cached on disk)."""
    try:
        return trt_bindings.load_api(request.param)
    except trt_bindings.BindingsUnavailable as exc:
        pytest.skip(f"TensorRT {request.param} Python bindings unavailable here: {exc}")


def major(api: dict[str, Any]) -> int:
    return int(api["version"].split(".")[0])


@pytest.fixture
def install(monkeypatch):
    """Make ``import tensorrt`` give a scripted fake of ``api`` and give the build a fake GPU."""

    def install_(api: dict[str, Any], **options: Any) -> trt_bindings.FakeTensorRT:
        fake = trt_bindings.scripted_tensorrt(api, **options)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        monkeypatch.setattr("segdeploy.environment.cuda_device", lambda: GPU)
        return fake

    return install_


def flag_names(fake: trt_bindings.FakeTensorRT, method: str) -> list[str]:
    return [args["flag"].name for args in fake.calls_to(f"IBuilderConfig.{method}")]


# --------------------------------------------------------------------------- the signature parser (no download)
def test_pybind_signatures_are_parsed_with_defaults_overloads_and_nested_types():
    doc = (
        "__init__(self: tensorrt_bindings.tensorrt.Logger, min_severity: "
        "tensorrt_bindings.tensorrt.ILogger.Severity = <Severity.WARNING: 2>) -> None\n\n"
    )
    (sig,) = trt_bindings.parse_doc(doc, "__init__")
    assert sig["params"][1] == {
        "name": "min_severity",
        "type": "ILogger.Severity",
        "default": "<Severity.WARNING: 2>",
        "kind": "normal",
    }
    overloaded = (
        "set_input_shape(*args, **kwargs)\nOverloaded function.\n\n"
        "1. set_input_shape(self: tensorrt_bindings.tensorrt.IExecutionContext, name: str, shape: tuple) -> bool\n\n"
        "    Set shape.\n\n"
        "2. set_input_shape(self: tensorrt_bindings.tensorrt.IExecutionContext, name: str, "
        "shape: collections.abc.Sequence[tuple[collections.abc.Sequence[typing.SupportsInt], bool]]) -> bool\n"
    )
    sigs = trt_bindings.parse_doc(overloaded, "set_input_shape")
    assert [s["params"][2]["type"] for s in sigs] == [
        "tuple",
        "collections.abc.Sequence[tuple[collections.abc.Sequence[typing.SupportsInt], bool]]",
    ]
    assert trt_bindings.parse_signature("(arg0: tensorrt_bindings.tensorrt.ITensor) -> str")["returns"] == "str"
    assert (
        trt_bindings.parse_signature("get_error(self: X, index: int) -> nvonnxparser::IParserError", "get_error")[
            "returns"
        ]
        == "nvonnxparser::IParserError"
    )


def test_missing_compiler_skips_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setattr(trt_bindings.shutil, "which", lambda name: None)
    with pytest.raises(trt_bindings.BindingsUnavailable, match="gcc"):
        trt_bindings._build_stubs(10, tmp_path / "stubs")


# --------------------------------------------------------------------------- the bindings themselves
def test_real_bindings_have_the_members_segdeploy_relies_on(trt_api):
    trt = trt_bindings.make_fake_tensorrt(trt_api)
    assert trt.__version__ == trt_api["version"]
    assert hasattr(trt.BuilderFlag, "TF32") and hasattr(trt.MemoryPoolType, "WORKSPACE")
    assert {"INPUT", "OUTPUT"} <= set(trt.TensorIOMode.__members__)
    assert {"FLOAT", "HALF", "INT8"} <= set(trt.DataType.__members__)
    if major(trt_api) == 10:
        assert hasattr(trt.BuilderFlag, "FP16") and hasattr(trt.BuilderFlag, "INT8")
        assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 1
    else:
        for removed in ("FP16", "INT8"):
            with pytest.raises(AttributeError):
                getattr(trt.BuilderFlag, removed)
        assert int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0


# --------------------------------------------------------------------------- build_engine
# (ONNX precision, requested precision, timing cache) -> what each TensorRT line must be asked to do.
BUILDS = [
    ("fp32", None, False),
    ("fp32", None, True),
    ("fp32", "fp16", False),
    ("fp16", None, False),
    ("fp16", None, True),
    ("int8", None, False),
    ("int8", "int8", True),
    ("int8-fp16", None, False),
    ("int8-fp16", "int8-fp16", True),
]


@pytest.mark.parametrize("onnx_precision, requested, with_cache", BUILDS)
def test_build_engine_makes_only_calls_the_real_bindings_accept(
    trt_api, install, tmp_path, onnx_precision, requested, with_cache
):
    from segdeploy.runtime.trt_build import build_engine

    fake = install(trt_api)
    if onnx_precision.startswith("int8"):
        onnx_path = write_qdq_onnx(tmp_path / "m.onnx", fp16=onnx_precision == "int8-fp16")
    else:
        onnx_path = write_onnx(tmp_path / "m.onnx", fp16=onnx_precision == "fp16")
    cache = tmp_path / "timing.cache"
    if with_cache:
        cache.write_bytes(b"OLD")
    if major(trt_api) >= 11 and requested == "fp16" and onnx_precision == "fp32":
        with pytest.raises(UserInputError, match="--precision fp16"):
            build_engine(onnx_path, precision=requested)
        assert fake.calls == []  # refused before any TensorRT object exists
        return
    result = build_engine(onnx_path, precision=requested, workspace_gb=2, timing_cache=cache if with_cache else None)

    engine_precision = requested or onnx_precision
    strongly_typed = major(trt_api) >= 11 or onnx_precision != "fp32"
    flags = fake.calls_to("Builder.create_network")
    expected_bits = 1 << 1 if major(trt_api) == 10 and strongly_typed else 0
    assert [args["flags"] for args in flags] == [expected_bits]
    assert flag_names(fake, "set_flag") == (["FP16"] if engine_precision == "fp16" and not strongly_typed else [])
    assert flag_names(fake, "clear_flag") == (["TF32"] if engine_precision == "fp32" else [])
    (pool,) = fake.calls_to("IBuilderConfig.set_memory_pool_limit")
    assert (pool["pool"].name, pool["pool_size"]) == ("WORKSPACE", 2 << 30)
    (shape,) = fake.calls_to("IOptimizationProfile.set_shape")
    assert (shape["input"], tuple(shape["min"]), tuple(shape["opt"]), tuple(shape["max"])) == (
        "input",
        (1, 3, 32, 32),
        (2, 3, 64, 96),
        (4, 3, 128, 192),
    )
    assert fake.calls_to("OnnxParser.parse_from_file") == [{"model": str(onnx_path)}]
    assert result.engine_path.read_bytes() == b"PLAN"
    assert result.sidecar.tensorrt_version == trt_api["version"]
    assert result.sidecar.precision.value == engine_precision and result.sidecar.strongly_typed is strongly_typed
    assert result.sidecar.explicit_quantization is onnx_precision.startswith("int8")
    if with_cache:
        assert [bytes(a["serialized_timing_cache"]) for a in fake.calls_to("IBuilderConfig.create_timing_cache")] == [
            b"OLD"
        ]
        assert [a["ignore_mismatch"] for a in fake.calls_to("IBuilderConfig.set_timing_cache")] == [False]
        assert cache.read_bytes() == b"OLD+tuned"
    else:
        assert "IBuilderConfig.create_timing_cache" not in fake.called()


def test_foreign_timing_cache_is_replaced_through_real_calls(trt_api, install, tmp_path):
    from segdeploy.runtime.trt_build import build_engine

    fake = install(trt_api, cache_matches=False)
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"FOREIGN")
    build_engine(write_onnx(tmp_path / "m.onnx"), timing_cache=cache)
    assert [bytes(a["serialized_timing_cache"]) for a in fake.calls_to("IBuilderConfig.create_timing_cache")] == [
        b"FOREIGN",
        b"",
    ]
    assert cache.read_bytes() == b"+tuned"


def test_parser_errors_are_read_through_real_calls(trt_api, install, tmp_path):
    from segdeploy.runtime.trt_build import build_engine

    fake = install(trt_api, parse_errors=("In node 3 (Foo): UNSUPPORTED_NODE:\nno importer", "second", "3", "4"))
    with pytest.raises(UserInputError, match=r"UNSUPPORTED_NODE: no importer; second; 3 \(\+1 more\)"):
        build_engine(write_onnx(tmp_path / "m.onnx"))
    assert [a["index"] for a in fake.calls_to("OnnxParser.get_error")] == [0, 1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_build_returning_none_is_an_error_through_real_calls(trt_api, install, tmp_path):
    from segdeploy.runtime.trt_build import build_engine

    install(trt_api, plan=None)
    with pytest.raises(SegdeployError, match="could not build an engine"):
        build_engine(write_onnx(tmp_path / "m.onnx"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# --------------------------------------------------------------------------- the runner's TensorRT side
def test_engine_loading_io_and_shapes_use_only_real_calls(trt_api, install, tmp_path):
    import torch

    from segdeploy.runtime.trt_runner import bind_tensors, check_in_profile, enqueue, load_engine, set_shapes

    tensors = {"input": ("INPUT", "FLOAT"), "aux": ("OUTPUT", "FLOAT"), "logits": ("OUTPUT", "HALF")}
    fake = install(trt_api, tensors=tensors, num_classes=7)
    loaded = load_engine(fake, b"ENGINE", tmp_path / "m.engine", has_sidecar=True)
    io = loaded.io
    assert (io.input_name, io.input_dtype) == ("input", torch.float32)
    assert io.outputs == (("logits", torch.float16), ("aux", torch.float32))
    assert (io.profile.min, io.profile.opt, io.profile.max) == ((1, 3, 32, 32), (2, 3, 64, 64), (4, 3, 128, 128))
    assert [bytes(a["serialized_engine"]) for a in fake.calls_to("Runtime.deserialize_cuda_engine")] == [b"ENGINE"]
    assert fake.calls_to("ICudaEngine.get_tensor_profile_shape") == [{"name": "input", "profile_index": 0}]

    shape = (2, 3, 45, 61)
    check_in_profile(shape, io.profile.min, io.profile.max, io.input_name)
    assert set_shapes(loaded.context, io, torch.Size(shape)) == [(2, 7, 45, 61), (2, 7, 45, 61)]
    bind_tensors(loaded.context, io, 4096, [8192, 12288])
    assert [(a["name"], a["memory"]) for a in fake.calls_to("IExecutionContext.set_tensor_address")] == [
        ("input", 4096),
        ("logits", 8192),
        ("aux", 12288),
    ]
    enqueue(loaded.context, 1234, tmp_path / "m.engine")
    assert fake.calls_to("IExecutionContext.execute_async_v3") == [{"stream_handle": 1234}]


def test_shapes_tensorrt_refuses_are_one_clear_error(trt_api, install, tmp_path):
    from segdeploy.runtime.trt_runner import load_engine, set_shapes

    fake = install(trt_api)
    loaded = load_engine(fake, b"ENGINE", tmp_path / "m.engine", has_sidecar=True)
    with pytest.raises(UserInputError, match="refused input shape 1x3x256x64"):
        set_shapes(loaded.context, loaded.io, (1, 3, 256, 64))


def test_engine_tensorrt_cannot_deserialize_is_a_user_error(trt_api, install, tmp_path):
    from segdeploy.runtime.trt_runner import load_engine

    fake = install(trt_api, deserializes=False)
    with pytest.raises(UserInputError, match=r"could not load .*m\.engine \(no sidecar"):
        load_engine(fake, b"ENGINE", tmp_path / "m.engine", has_sidecar=False)
    assert "ICudaEngine.create_execution_context" not in fake.called()


def test_runner_activates_against_the_real_bindings(trt_api, install, tmp_path, monkeypatch):
    import dataclasses
    import hashlib

    import torch
    from test_trt_runner import SIDECAR

    from segdeploy.artifact import Precision
    from segdeploy.runtime.trt_runner import TrtRunner

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"ENGINE")
    sidecar = dataclasses.replace(
        SIDECAR,
        tensorrt_version=trt_api["version"],
        precision=Precision.FP32,
        engine_sha256=hashlib.sha256(b"ENGINE").hexdigest(),
    )
    sidecar.write(engine)
    fake = install(trt_api)
    monkeypatch.setattr(torch.cuda, "Stream", lambda: types.SimpleNamespace(cuda_stream=77))
    runner = TrtRunner(engine)
    runner.activate()
    assert runner.io is not None and runner.io.input_name == "input" and runner.label == "trt-fp32"
    runner._execute()
    assert fake.calls_to("IExecutionContext.execute_async_v3") == [{"stream_handle": 77}]
    runner.deactivate()


# --------------------------------------------------------------------------- the fake catches mistakes
def _objects(trt: trt_bindings.FakeTensorRT) -> types.SimpleNamespace:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    config = builder.create_builder_config()
    context = trt.make("IExecutionContext")
    return types.SimpleNamespace(
        logger=logger,
        builder=builder,
        network=network,
        config=config,
        parser=trt.OnnxParser(network, logger),
        profile=builder.create_optimization_profile(),
        cache=config.create_timing_cache(b""),
        context=context,
        engine=trt.make("ICudaEngine"),
    )


WRONG_CALLS = {
    "misspelt method": lambda trt, o: o.builder.create_netwrok(0),
    "missing argument": lambda trt, o: o.config.set_timing_cache(o.cache),
    "extra argument": lambda trt, o: o.parser.parse_from_file("m.onnx", True),
    "unknown keyword": lambda trt, o: o.builder.create_network(flag=0),
    "unknown enum member": lambda trt, o: o.config.set_flag(trt.BuilderFlag.FP61),
    "enum where an int goes": lambda trt, o: o.builder.create_network(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED),
    "int where an enum goes": lambda trt, o: o.config.set_flag(0),
    "enum of another type": lambda trt, o: o.config.set_flag(trt.MemoryPoolType.WORKSPACE),
    "float where an int goes": lambda trt, o: o.config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1.5),
    "Path where a str goes": lambda trt, o: o.parser.parse_from_file(Path("m.onnx")),
    "str where a buffer goes": lambda trt, o: o.config.create_timing_cache("cache"),
    "non-int in a shape": lambda trt, o: o.profile.set_shape("input", (1, 3, 32.0, 32), (1, 3, 64, 64), (1, 3, 64, 64)),
    "wrong object type": lambda trt, o: o.builder.build_serialized_network(o.config, o.network),
    "stream object, not its handle": lambda trt, o: o.context.execute_async_v3(object()),
    "read-only property": lambda trt, o: setattr(o.network, "num_inputs", 2),
    "unknown property": lambda trt, o: setattr(o.config, "max_workspace_size", 1 << 30),  # removed in 10.0
    "class without a constructor": lambda trt, o: trt.ICudaEngine(),
    "profile index as str": lambda trt, o: o.engine.get_tensor_profile_shape("input", "0"),
    "keyword on a positional-only parameter": lambda trt, o: trt.dims([1, 2]).__getitem__(arg0=0),
}


@pytest.mark.parametrize("mistake", list(WRONG_CALLS))
def test_the_fake_rejects_calls_the_real_bindings_would_reject(trt_api, mistake):
    trt = trt_bindings.make_fake_tensorrt(trt_api)
    objects = _objects(trt)
    with pytest.raises((TypeError, AttributeError)):
        WRONG_CALLS[mistake](trt, objects)


def test_the_fake_rejects_apis_removed_in_tensorrt_11(trt_api):
    trt = trt_bindings.make_fake_tensorrt(trt_api)
    engine, builder = trt.make("ICudaEngine"), trt.Builder(trt.Logger())
    removed = [
        lambda: trt.BuilderFlag.FP16,
        lambda: trt.BuilderFlag.INT8,
        lambda: engine.create_execution_context_without_device_memory(),
        lambda: builder.platform_has_fast_fp16,
    ]
    for call in removed:
        if major(trt_api) >= 11:
            with pytest.raises(AttributeError):
                call()
        else:
            call()


def test_scripted_returns_must_match_the_declared_type(trt_api):
    trt = trt_bindings.make_fake_tensorrt(trt_api, {"Builder.create_network": lambda self, **_: "not a network"})
    with pytest.raises(AssertionError, match="returned a value the real method cannot"):
        trt.Builder(trt.Logger()).create_network(0)
    with pytest.raises(KeyError, match="Builder.create_netwrok"):
        trt_bindings.make_fake_tensorrt(trt_api, {"Builder.create_netwrok": lambda self, **_: None})


# --------------------------------------------------------------------------- mutations of the real code
# Each edit puts one kind of mistake into segdeploy's own TensorRT calls; the conformance fake must catch it.
BUILD_MUTATIONS = {
    "misspelt method": ("config.set_memory_pool_limit(", "config.set_memory_pool_limits("),
    "dropped argument": ("if not config.set_timing_cache(cache, False)", "if not config.set_timing_cache(cache)"),
    "wrong enum member": ("trt.BuilderFlag.TF32", "trt.BuilderFlag.TF_32"),
    "Path for str": ("parser.parse_from_file(str(onnx_path))", "parser.parse_from_file(onnx_path)"),
    "wrong keyword": (
        "builder.create_network(network_flags(trt, plan))",
        "builder.create_network(flag=network_flags(trt, plan))",
    ),
}
RUNNER_MUTATIONS = {
    "missing profile index": (
        "engine.get_tensor_profile_shape(input_name, 0)",
        "engine.get_tensor_profile_shape(input_name)",
    ),
    "address as str": (
        "context.set_tensor_address(name, int(address))",
        "context.set_tensor_address(name, str(address))",
    ),
}


def _mutated(monkeypatch, module_name: str, old: str, new: str) -> types.ModuleType:
    """A copy of ``module_name`` with ``old`` replaced by ``new`` (which must appear exactly once)."""
    module = sys.modules[module_name]
    source = Path(module.__file__).read_text(encoding="utf-8")
    assert source.count(old) == 1, f"{old!r} no longer appears once in {module_name}: update the mutation"
    mutant = types.ModuleType(f"{module_name}_mutant")
    mutant.__file__ = module.__file__
    monkeypatch.setitem(sys.modules, mutant.__name__, mutant)  # dataclasses look their module up
    exec(compile(source.replace(old, new), module.__file__, "exec"), mutant.__dict__)
    return mutant


@pytest.mark.parametrize("mutation", list(BUILD_MUTATIONS))
def test_a_wrong_tensorrt_call_in_build_engine_fails_against_real_bindings(
    trt_api, install, tmp_path, monkeypatch, mutation
):
    import segdeploy.runtime.trt_build  # noqa: F401  (the module the mutant copies)

    mutant = _mutated(monkeypatch, "segdeploy.runtime.trt_build", *BUILD_MUTATIONS[mutation])
    install(trt_api)
    onnx_path = write_onnx(tmp_path / "m.onnx")
    with pytest.raises((TypeError, AttributeError)):
        mutant.build_engine(onnx_path, timing_cache=tmp_path / "t.cache")


@pytest.mark.parametrize("mutation", list(RUNNER_MUTATIONS))
def test_a_wrong_tensorrt_call_in_the_runner_fails_against_real_bindings(
    trt_api, install, tmp_path, monkeypatch, mutation
):
    import segdeploy.runtime.trt_runner  # noqa: F401

    mutant = _mutated(monkeypatch, "segdeploy.runtime.trt_runner", *RUNNER_MUTATIONS[mutation])
    fake = install(trt_api)
    with pytest.raises((TypeError, AttributeError)):
        loaded = mutant.load_engine(fake, b"ENGINE", tmp_path / "m.engine", has_sidecar=True)
        mutant.bind_tensors(loaded.context, loaded.io, 4096, [8192])


def test_unmutated_code_passes_the_same_checks(trt_api, install, tmp_path):
    from segdeploy.runtime.trt_build import build_engine
    from segdeploy.runtime.trt_runner import bind_tensors, load_engine

    fake = install(trt_api)
    build_engine(write_onnx(tmp_path / "m.onnx"), timing_cache=tmp_path / "t.cache")
    loaded = load_engine(fake, b"ENGINE", tmp_path / "m.engine", has_sidecar=True)
    bind_tensors(loaded.context, loaded.io, 4096, [8192])
    assert fake.calls and all(c.name.split(".")[0] in trt_api["classes"] for c in fake.calls)
