"""Build a TensorRT engine from a segdeploy ONNX file, on TensorRT 10.x and 11.x.

Everything that decides something is a pure function testable without
TensorRT: :func:`trt_major`, :func:`plan_build` (typing and precision per
TensorRT line), :func:`derive_profile` (the optimization profile) and
:func:`make_sidecar` (the JSON written beside the engine). :func:`build_engine`
only carries those decisions out with TensorRT calls.

TensorRT calls follow NVIDIA's Python API reference and migration guide:
  [PY]  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/  (Builder, BuilderConfig,
        Network, OnnxParser pages; 11.0: .../tensorrt/11.0.0/_static/python-api/infer/Core/Builder.html)
  [MIG] https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-patterns.html
  [REM] https://docs.nvidia.com/deeplearning/tensorrt/11.4.0/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  [EQ]  https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html
  [TX]  trtexec 10.3 (NVIDIA/TensorRT samples/common/sampleOptions.cpp, tag v10.3.0): --stronglyTyped turns
        --int8/--fp16 off ("not allowed if graph is strongly typed")
and were checked against the bindings (NVIDIA/TensorRT python/src/infer/pyCore.cpp, tags v10.3.0 and v11.1);
tests/test_trt_conformance.py runs every call against the real 10.3, 10.16 and 11.4 Python bindings.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from segdeploy._version import __version__
from segdeploy.artifact import InputFormat, Metadata, Precision, parse_choice, parse_precision
from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError
from segdeploy.fileio import atomic_output, check_output_path, sha256_file, write_bytes_atomic
from segdeploy.runtime.sidecar import EngineSidecar, ProfileShapes, sidecar_path
from segdeploy.runtime.trt_plan import (
    QUANTIZED,
    BuildPlan,
    Profile,
    ShapeLike,
    check_precision,
    derive_profile,
    network_flags,
    plan_build,
    trt_major,
)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})

Progress = Callable[[str], None]


def make_sidecar(
    *,
    plan: BuildPlan,
    profile: Profile,
    input_name: str,
    input_format: str = "float32-nchw",
    trt_version: str,
    gpu_name: str,
    compute_capability: str,
    onnx_path: Path,
    onnx_sha256: str,
    engine_sha256: str,
    workspace_gb: float,
    timing_cache: Path | None,
    build_seconds: float,
) -> EngineSidecar:
    """The facts written beside an engine; the runner refuses engines whose facts do not match.

    Returns:
        The :class:`EngineSidecar` (``.write(engine_path)`` writes it).
    """
    return EngineSidecar(
        tensorrt_version=trt_version,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        precision=parse_precision(plan.precision),
        input_name=input_name,
        input_format=parse_choice(InputFormat, input_format, "input format"),
        profile=ProfileShapes(tuple(profile.min), tuple(profile.opt), tuple(profile.max)),
        onnx_path=str(onnx_path),
        onnx_sha256=onnx_sha256,
        engine_sha256=engine_sha256,
        strongly_typed=plan.strongly_typed,
        fp16_builder_flag=plan.fp16_flag,
        explicit_quantization=plan.explicit_quantization,
        tf32=not plan.strict_fp32,
        workspace_gb=workspace_gb,
        timing_cache=str(timing_cache) if timing_cache else None,
        build_seconds=round(build_seconds, 3),
        built_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        segdeploy_version=__version__,
    )


# --------------------------------------------------------------------------- the ONNX input
@dataclass(frozen=True)
class OnnxFacts:
    """What the build needs to know about an ONNX file before TensorRT sees it."""

    input_name: str
    input_dims: tuple[int | None, ...]
    precision: Precision
    metadata: Metadata = field(default_factory=Metadata)


def read_onnx_facts(onnx_path: str | Path) -> OnnxFacts:
    """Load an ONNX file's graph (not its external weights) and read input, precision and metadata.

    The float part is FP16 when the metadata written by ``segdeploy export`` says fp16 (or int8-fp16) or any
    initializer is FLOAT16, else FP32. QuantizeLinear/DequantizeLinear nodes make it INT8 (FP32 elsewhere) or
    INT8_FP16 (FP16 elsewhere), whatever the metadata says: the nodes are what TensorRT builds.

    Raises:
        UserInputError: missing file, not an ONNX model, not exactly one 4-D input, unreadable segdeploy
            metadata, or metadata claiming int8 for a file without Q/DQ nodes.
    """
    import onnx

    from segdeploy.artifact import load_onnx, read_metadata

    path = Path(onnx_path)
    model = load_onnx(path)
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if not inputs:
        raise UserInputError(f"{path} has no graph inputs; expected one NCHW input")
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs)
        raise UserInputError(f"{path} has {len(inputs)} inputs ({names}); segdeploy builds single-input models")
    tensor_type = inputs[0].type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
    if len(dims) != 4:
        raise UserInputError(f"{path}: input {inputs[0].name!r} has rank {len(dims)}; expected NCHW (rank 4)")
    metadata = read_metadata(model)
    claimed = metadata.precision
    quantized = _has_qdq(graph)
    if claimed in QUANTIZED and not quantized:
        raise UserInputError(
            f"{path} says precision {claimed.value} but has no QuantizeLinear/DequantizeLinear nodes: re-export it "
            f"with `segdeploy export MODEL --precision {claimed.value} --calib PATH`"
        )
    fp16 = claimed in (Precision.FP16, Precision.INT8_FP16) or any(
        t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer
    )
    if quantized:
        precision = Precision.INT8_FP16 if fp16 else Precision.INT8
    else:
        precision = Precision.FP16 if fp16 else Precision.FP32
    return OnnxFacts(inputs[0].name, dims, precision, metadata)


def _has_qdq(graph: Any) -> bool:
    """Whether a graph (or a subgraph of an If/Loop/Scan) has standard-domain Q/DQ nodes."""
    for node in graph.node:
        if node.op_type in QDQ_OPS and node.domain in ("", "ai.onnx"):
            return True
        for attr in node.attribute:
            if attr.HasField("g") and _has_qdq(attr.g):
                return True
            if any(_has_qdq(g) for g in attr.graphs):
                return True
    return False


# --------------------------------------------------------------------------- TensorRT availability
def require_tensorrt() -> tuple[ModuleType, Any]:
    """Import TensorRT and find the CUDA GPU, or say in one line what is missing.

    Returns:
        ``(tensorrt module, GpuInfo)``.

    Raises:
        MissingDependencyError: TensorRT not importable, no CUDA GPU, or TensorRT < 10.
    """
    import importlib

    from segdeploy.environment import TENSORRT_INSTALL_HINT, cuda_device, no_gpu_reason, tensorrt_status

    version, trt_problem = tensorrt_status()
    gpu = cuda_device()
    problems = [p for p in (trt_problem, None if gpu is not None else no_gpu_reason()) if p]
    if problems:
        raise MissingDependencyError("; ".join(problems) + f": {TENSORRT_INSTALL_HINT}")
    trt = importlib.import_module("tensorrt")
    if trt_major(trt) < 10:
        raise MissingDependencyError(f"TensorRT {version} is too old: {TENSORRT_INSTALL_HINT}")
    return trt, gpu


# --------------------------------------------------------------------------- the build
@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_engine` wrote."""

    engine_path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    plan: BuildPlan
    profile: Profile
    engine_bytes: int
    build_seconds: float
    timing_cache_path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["sidecar"] = self.sidecar.to_dict()
        for key in ("engine_path", "sidecar_path", "timing_cache_path"):
            data[key] = str(data[key]) if data[key] else None
        return data


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    *,
    min_shape: ShapeLike | None = None,
    opt_shape: ShapeLike | None = None,
    max_shape: ShapeLike | None = None,
    workspace_gb: float = 4.0,
    timing_cache: str | Path | None = None,
    precision: Precision | str | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Build a TensorRT engine (plus ``ENGINE.json`` sidecar) from an ONNX file.

    Args:
        onnx_path: the ONNX file: FP32, FP16 with float32 I/O (``segdeploy export --precision fp16``), or
            INT8 with QuantizeLinear/DequantizeLinear nodes, FP32 or FP16 elsewhere (``--precision int8`` or
            ``int8-fp16``).
        engine_path: where to write; default: the ONNX path with suffix ``.engine``.
        min_shape, opt_shape, max_shape: the optimization profile (see :func:`derive_profile` for defaults).
        workspace_gb: TensorRT workspace memory pool limit in GiB.
        timing_cache: a timing cache file to reuse (when it exists) and update after the build.
        precision: the engine precision (``Precision`` or its name); default: the ONNX's own precision.
        progress: called with a short message at each stage.

    Returns:
        A :class:`BuildResult`.

    Raises:
        UserInputError: bad ONNX, shapes, precision or output path; TensorRT cannot parse the ONNX.
        MissingDependencyError: TensorRT or a CUDA GPU is missing.
        SegdeployError: TensorRT failed to build the engine.
    """
    say = progress or (lambda _message: None)
    onnx_path = Path(onnx_path)
    facts = read_onnx_facts(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".engine")
    cache_path = Path(timing_cache) if timing_cache else None
    _check_outputs(onnx_path, engine_path, cache_path)
    if not workspace_gb > 0:
        raise UserInputError(f"bad workspace {workspace_gb} GB: expected a positive number")
    check_precision(facts.precision, precision)
    _check_lint(onnx_path)
    profile = derive_profile(facts.metadata, min_shape, opt_shape, max_shape, graph_shape=facts.input_dims)

    trt, gpu = require_tensorrt()
    plan = plan_build(trt_major(trt), facts.precision, precision)
    cache_in = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""

    started = time.perf_counter()
    serialized, cache_out, input_name = _run_builder(
        trt, onnx_path, facts, profile, plan, workspace_gb, cache_in, say, cache_path
    )
    build_seconds = time.perf_counter() - started

    say(f"writing {engine_path}")
    sidecar = make_sidecar(
        plan=plan,
        profile=profile,
        input_name=input_name,
        trt_version=str(trt.__version__),
        input_format=facts.metadata.preprocessing.input_format,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        onnx_path=onnx_path,
        onnx_sha256=sha256_file(onnx_path),
        engine_sha256=hashlib.sha256(serialized).hexdigest(),
        workspace_gb=workspace_gb,
        timing_cache=cache_path,
        build_seconds=build_seconds,
    )
    side = sidecar_path(engine_path)
    # Both files appear together: the sidecar is renamed into place just before the engine.
    with atomic_output(engine_path) as tmp_engine:
        tmp_engine.write_bytes(serialized)
        sidecar.write(engine_path)
    if cache_path is not None and cache_out:
        write_bytes_atomic(cache_path, cache_out)
    return BuildResult(
        engine_path, side, sidecar, plan, profile, len(serialized), build_seconds, cache_path if cache_out else None
    )


def _check_lint(onnx_path: Path) -> None:
    """Refuse, before TensorRT starts, a file segdeploy's TensorRT lint rejects, naming the first reason."""
    from segdeploy.export.lint import lint_onnx

    report = lint_onnx(onnx_path)
    if not report.ok:
        first = report.errors[0]
        raise UserInputError(
            f"{onnx_path} is not TensorRT-ready ({report.summary()}): {first.node} ({first.op_type}): {first.message}"
        )


def _check_outputs(onnx_path: Path, engine_path: Path, cache_path: Path | None) -> None:
    """Refuse, before any TensorRT work, outputs that cannot be written or would overwrite an input or each other."""
    outputs = {"engine": engine_path, "sidecar": sidecar_path(engine_path)}
    if cache_path is not None:
        outputs["timing cache"] = cache_path
    for what, path in outputs.items():
        check_output_path(path)
        if path.resolve() == onnx_path.resolve():
            raise UserInputError(f"the {what} path {path} would overwrite the ONNX file: pick another path")
    if cache_path is not None and cache_path.resolve() in (engine_path.resolve(), sidecar_path(engine_path).resolve()):
        raise UserInputError(
            f"the timing cache {cache_path} would overwrite the engine or its sidecar: pick another path"
        )


def _run_builder(
    trt: Any,
    onnx_path: Path,
    facts: OnnxFacts,
    profile: Profile,
    plan: BuildPlan,
    workspace_gb: float,
    cache_in: bytes,
    say: Progress,
    cache_path: Path | None,
) -> tuple[bytes, bytes | None, str]:
    say("parsing ONNX with TensorRT")
    logger = trt.Logger(trt.Logger.WARNING)  # [PY] Logger; [MIG] shows the same call on 10.x and 11.x
    builder = trt.Builder(logger)  # [PY] Builder
    network = builder.create_network(network_flags(trt, plan))  # [PY] Builder.create_network(flags=0)
    parser = trt.OnnxParser(network, logger)  # [PY] parsers/Onnx/pyOnnx.html
    # parse_from_file (not parse(bytes)) also resolves external weight files next to the ONNX.
    if not parser.parse_from_file(str(onnx_path)):
        raise UserInputError(_parse_error_message(parser, onnx_path))
    if network.num_inputs != 1:  # [PY] Network: num_inputs / get_input
        raise UserInputError(f"TensorRT sees {network.num_inputs} inputs in {onnx_path}; expected 1")
    input_name = network.get_input(0).name

    config = builder.create_builder_config()  # [PY] BuilderConfig
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if plan.fp16_flag:
        # Only ever reached on 10.x (plan_build guarantees it); on 11.x this attribute does not exist
        # and an AttributeError would be the right outcome, never a silent FP32 build.
        config.set_flag(trt.BuilderFlag.FP16)
    if plan.strict_fp32:
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default in 10.x and 11.x

    opt_profile = builder.create_optimization_profile()  # [PY] Builder.create_optimization_profile
    opt_profile.set_shape(input_name, profile.min, profile.opt, profile.max)  # [PY] IOptimizationProfile.set_shape
    if config.add_optimization_profile(opt_profile) < 0:
        raise UserInputError(f"TensorRT rejected the optimization profile ({profile}) for input {input_name!r}")

    if cache_path is not None:
        # [PY] BuilderConfig.create_timing_cache(b"" = new) / set_timing_cache(cache, ignore_mismatch):
        # returns False when the cache was made for another device; then start a fresh one.
        cache = config.create_timing_cache(cache_in)
        if not config.set_timing_cache(cache, False):
            say(f"timing cache {cache_path} was made on another GPU or TensorRT build: starting a new one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)

    say(f"building {plan.precision.value} engine with TensorRT {trt.__version__} (this can take minutes)")
    serialized = builder.build_serialized_network(network, config)  # [PY] Builder: IHostMemory or None
    if serialized is None:
        raise SegdeployError(
            f"TensorRT could not build an engine from {onnx_path} (see TensorRT's messages above); "
            "try a larger --workspace or `segdeploy lint` the ONNX"
        )
    cache_out = None
    if cache_path is not None:
        cache_out = bytes(memoryview(config.get_timing_cache().serialize()))
    return bytes(memoryview(serialized)), cache_out, input_name


def _parse_error_message(parser: Any, onnx_path: Path) -> str:
    # [PY] OnnxParser.num_errors / get_error(i); str(error) names node, operator and description.
    errors = [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
    shown = "; ".join(errors[:3]) or "no details"
    more = f" (+{len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"TensorRT cannot parse {onnx_path}: {shown}{more}; run `segdeploy lint {onnx_path}`"
