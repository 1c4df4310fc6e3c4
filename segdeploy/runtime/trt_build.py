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
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from segdeploy._version import __version__
from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError
from segdeploy.fileio import atomic_output, check_output_path, write_bytes_atomic, write_text_atomic
from segdeploy.shapes import Shape, check_shape, format_shape, parse_shape

PRECISIONS = ("fp32", "fp16", "int8", "int8-fp16")
# Explicitly quantized: INT8 where the ONNX has QuantizeLinear/DequantizeLinear, FP32 or FP16 elsewhere.
QUANTIZED = ("int8", "int8-fp16")
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
DEFAULT_MIN_SIDE = 32  # the largest total stride in the zoo; used when the ONNX metadata names no min_size
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1

ShapeLike = Shape | Sequence[int] | str
Progress = Callable[[str], None]


# --------------------------------------------------------------------------- decisions (no TensorRT needed)
def trt_major(trt_module: Any) -> int:
    """Major version of a TensorRT module from ``trt.__version__`` ("10.3.0.30" -> 10)."""
    version = str(getattr(trt_module, "__version__", ""))
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise MissingDependencyError(f"cannot read the TensorRT version from {version!r}: reinstall TensorRT") from None


@dataclass(frozen=True)
class BuildPlan:
    """How to type and flag one build.

    Attributes:
        trt_major: the TensorRT line the plan is for.
        precision: the engine's precision: ``"fp32"``, ``"fp16"``, ``"int8"`` (Q/DQ, FP32 elsewhere) or
            ``"int8-fp16"`` (Q/DQ, FP16 elsewhere).
        strongly_typed: layer types come from the ONNX tensor types.
        strongly_typed_flag: pass ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (10.x only; 11.x is
            always strongly typed and deprecates the flag).
        fp16_flag: set ``BuilderFlag.FP16`` (10.x weak typing only; the flag does not exist on 11.x).
        strict_fp32: clear ``BuilderFlag.TF32`` so an FP32 engine really computes in FP32.
        explicit_quantization: the ONNX carries QuantizeLinear/DequantizeLinear nodes (INT8 engine).
    """

    trt_major: int
    precision: str
    strongly_typed: bool
    strongly_typed_flag: bool
    fp16_flag: bool
    strict_fp32: bool
    explicit_quantization: bool = False


def normalize_precision(value: str | None, *, what: str = "precision") -> str | None:
    """``"FP16"``/``"float16"`` -> ``"fp16"``, ``"INT8_FP16"`` -> ``"int8-fp16"``; None stays None.

    Raises:
        UserInputError: anything but fp32, fp16, int8 or int8-fp16.
    """
    if value is None:
        return None
    text = str(value).strip().lower().replace("_", "-").replace("+", "-")
    text = {"float32": "fp32", "float16": "fp16", "half": "fp16", "float": "fp32"}.get(text, text)
    if text not in PRECISIONS:
        raise UserInputError(f"bad {what} {value!r}: expected fp32, fp16, int8 or int8-fp16")
    return text


def check_precision(onnx_precision: str, requested_precision: str | None) -> str:
    """The engine precision an ONNX gives, refusing requests no TensorRT line can meet from it.

    Called before TensorRT is even imported, so a wrong request is reported on any machine.

    Args:
        onnx_precision: what the ONNX stores (see :func:`read_onnx_facts`).
        requested_precision: the engine precision asked for, or None for the ONNX's own.

    Returns:
        The engine precision.

    Raises:
        UserInputError: INT8 from an ONNX without Q/DQ nodes, a Q/DQ ONNX asked for another precision, or
            FP32 from an FP16 ONNX.
    """
    onnx_precision = normalize_precision(onnx_precision, what="ONNX precision") or "fp32"
    wanted = normalize_precision(requested_precision) or onnx_precision
    if wanted in QUANTIZED and onnx_precision not in QUANTIZED:
        raise UserInputError(
            f"this ONNX has no QuantizeLinear/DequantizeLinear nodes, so TensorRT cannot build {wanted} from it: "
            f"export a quantized ONNX with `segdeploy export MODEL --precision {wanted} --calib PATH` and build that"
        )
    if onnx_precision in QUANTIZED and wanted != onnx_precision:
        hint = f"--precision {wanted} --calib PATH" if wanted in QUANTIZED else f"--precision {wanted}"
        raise UserInputError(
            f"this ONNX is quantized as {onnx_precision} (QuantizeLinear/DequantizeLinear nodes, "
            f"{'FP16' if onnx_precision == 'int8-fp16' else 'FP32'} elsewhere), so its engine is {onnx_precision}: "
            f"export the {wanted} ONNX with `segdeploy export MODEL {hint}` and build that"
        )
    if onnx_precision == "fp16" and wanted == "fp32":
        raise UserInputError(
            "this ONNX stores FP16 weights, so its engine is FP16: build the FP32 ONNX "
            "(`segdeploy export MODEL --precision fp32`) for an FP32 engine"
        )
    return wanted


def plan_build(trt_major: int, onnx_precision: str, requested_precision: str | None) -> BuildPlan:
    """Decide network typing and builder flags for one TensorRT line.

    TensorRT >= 11 has no FP16 or INT8 builder flag (removed, [REM]); networks are always strongly typed, so
    the ONNX dtypes *are* the engine precision. TensorRT 10.x builds an FP32 ONNX weakly typed (with
    ``BuilderFlag.FP16`` for fp16) and an FP16 ONNX strongly typed; never both, which fails the build
    (NVIDIA/TensorRT issues 4228, 4253).

    INT8 is explicit quantization on both lines: the ONNX's QuantizeLinear/DequantizeLinear nodes say
    where, its float types say what runs elsewhere (FP32 for ``int8``, FP16 for ``int8-fp16``). NVIDIA asks
    for strong typing and no precision flags with Q/DQ networks ([EQ]); 10.x offers it through the
    STRONGLY_TYPED creation flag, with which trtexec 10.3 itself drops --int8/--fp16 ([TX]). The deprecated
    10.x alternative, weak typing plus ``BuilderFlag.INT8``, is never used: that flag is gone in 11.x ([REM]).

    Args:
        trt_major: TensorRT major version (see :func:`trt_major`).
        onnx_precision: what the ONNX file stores: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"int8-fp16"``.
        requested_precision: the engine precision asked for, or None for the ONNX's own.

    Returns:
        The :class:`BuildPlan`.

    Raises:
        UserInputError: a precision this TensorRT line cannot give from this ONNX.
        MissingDependencyError: TensorRT older than 10.
    """
    onnx_precision = normalize_precision(onnx_precision, what="ONNX precision") or "fp32"
    if trt_major < 10:
        raise MissingDependencyError(f"TensorRT {trt_major}.x is too old: segdeploy needs TensorRT 10.3 or newer")
    wanted = check_precision(onnx_precision, requested_precision)
    if wanted in QUANTIZED:
        return BuildPlan(trt_major, wanted, strongly_typed=True, strongly_typed_flag=trt_major < 11,
                         fp16_flag=False, strict_fp32=False, explicit_quantization=True)
    if trt_major >= 11:
        if wanted == "fp16" and onnx_precision == "fp32":
            raise UserInputError(
                f"TensorRT {trt_major} takes precision from the ONNX types (its FP16 builder flag was removed): "
                "export an FP16 ONNX with `segdeploy export MODEL --precision fp16` and build that"
            )
        return BuildPlan(trt_major, wanted, strongly_typed=True, strongly_typed_flag=False,
                         fp16_flag=False, strict_fp32=wanted == "fp32")
    if onnx_precision == "fp16":
        return BuildPlan(trt_major, "fp16", strongly_typed=True, strongly_typed_flag=True,
                         fp16_flag=False, strict_fp32=False)
    return BuildPlan(trt_major, wanted, strongly_typed=False, strongly_typed_flag=False,
                     fp16_flag=wanted == "fp16", strict_fp32=wanted == "fp32")


@dataclass(frozen=True)
class Profile:
    """One optimization profile for the NCHW input: TensorRT runs any shape with min <= shape <= max."""

    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    def __str__(self) -> str:
        return f"min {format_shape(self.min)}, opt {format_shape(self.opt)}, max {format_shape(self.max)}"


def derive_profile(
    metadata: Mapping[str, str],
    min_shape: ShapeLike | None = None,
    opt_shape: ShapeLike | None = None,
    max_shape: ShapeLike | None = None,
    *,
    graph_shape: Sequence[int | None] | None = None,
) -> Profile:
    """Choose and check the optimization profile, in the layout of the ONNX input (NCHW, or NHWC for raw frames).

    See :func:`_derive_nchw` for the defaults. Every height and width is checked against the sizes the
    model accepts (``size_multiple`` in the metadata).
    """
    nhwc = metadata.get("input_format") == "uint8-nhwc"

    def to_nchw(shape: Any) -> Any:
        if shape is None or not nhwc:
            return shape
        dims = parse_shape(shape) if isinstance(shape, str) else tuple(shape)
        return (dims[0], dims[3], dims[1], dims[2])

    def to_file(shape: Shape) -> Shape:
        return (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape

    nchw = _derive_nchw(metadata, to_nchw(min_shape), to_nchw(opt_shape), to_nchw(max_shape),
                        graph_shape=to_nchw(graph_shape) if graph_shape is not None else None)
    multiple = int(metadata.get("size_multiple") or 1)
    for which, shape in (("min", nchw.min), ("opt", nchw.opt), ("max", nchw.max)):
        if shape[2] % multiple or shape[3] % multiple:
            raise UserInputError(f"bad {which} shape {format_shape(to_file(shape))}: this model takes only heights "
                                 f"and widths that are multiples of {multiple}")
    return Profile(to_file(nchw.min), to_file(nchw.opt), to_file(nchw.max))


def _derive_nchw(
    metadata: Mapping[str, str],
    min_shape: ShapeLike | None = None,
    opt_shape: ShapeLike | None = None,
    max_shape: ShapeLike | None = None,
    *,
    graph_shape: Sequence[int | None] | None = None,
) -> Profile:
    """Choose and check the optimization profile in NCHW terms.

    Defaults, for each dimension the ONNX leaves dynamic:
    opt = the given opt shape, else the export's ``trace_shape`` (clipped into a given min/max);
    min = batch 1 and sides ``min(min_size, opt)`` where ``min_size`` comes from the metadata (default 32);
    max = twice the opt batch and twice the opt sides.
    A dimension the ONNX fixes is that value in min, opt and max; a fully static ONNX gets min = opt = max.

    Args:
        metadata: the ONNX ``metadata_props`` written by ``segdeploy export`` (``trace_shape``, ``in_channels``,
            ``min_size``; all optional).
        min_shape, opt_shape, max_shape: user shapes (``"1x3x512x512"`` or 4 ints), or None for the default.
        graph_shape: the ONNX input's dims with None for dynamic ones; None treats N, H, W as dynamic.

    Returns:
        The :class:`Profile`.

    Raises:
        UserInputError: a malformed shape, a shape that contradicts the ONNX, or not min <= opt <= max.
    """
    given = {
        "min": _as_shape(min_shape, "min"),
        "opt": _as_shape(opt_shape, "opt"),
        "max": _as_shape(max_shape, "max"),
    }
    fixed = _fixed_dims(metadata, graph_shape)
    for which, shape in given.items():
        if shape is not None:
            _check_fixed(shape, fixed, which)
    if all(d is not None for d in fixed):
        static = tuple(int(d) for d in fixed)  # type: ignore[arg-type]
        return Profile(static, static, static)  # type: ignore[arg-type]

    opt = given["opt"]
    if opt is None:
        trace = metadata.get("trace_shape")
        if not trace:
            raise UserInputError(
                "cannot choose the optimization shape: the ONNX has no trace_shape metadata; pass --opt-shape NxCxHxW"
            )
        opt = _fill_fixed(parse_shape(trace), fixed)
    min_side = int(metadata.get("min_size") or DEFAULT_MIN_SIDE)
    lo = given["min"] or _fill_fixed((1, opt[1], min(min_side, opt[2]), min(min_side, opt[3])), fixed)
    hi = given["max"] or _fill_fixed((2 * opt[0], opt[1], 2 * opt[2], 2 * opt[3]), fixed)
    if given["opt"] is None:
        opt = tuple(min(max(o, a), b) if a <= b else o for o, a, b in zip(opt, lo, hi))  # type: ignore[assignment]
    profile = Profile(lo, opt, hi)
    _check_order(profile)
    in_channels = fixed[1]
    for which, shape in (("min", lo), ("opt", opt), ("max", hi)):
        check_shape(shape, in_channels=in_channels, min_size=1, what=f"{which}")
    if lo[2] < min_side or lo[3] < min_side:
        raise UserInputError(
            f"bad min shape {format_shape(lo)}: this model needs height and width of at least {min_side}"
        )
    return profile


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + SIDECAR_SUFFIX)


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
) -> dict[str, Any]:
    """The JSON facts written beside an engine; the runner refuses engines whose facts do not match.

    Returns:
        A JSON-serialisable dict.
    """
    return {
        "format": SIDECAR_FORMAT,
        "segdeploy_version": __version__,
        "tensorrt_version": trt_version,
        "gpu_name": gpu_name,
        "compute_capability": compute_capability,
        "precision": plan.precision,
        "strongly_typed": plan.strongly_typed,
        "fp16_builder_flag": plan.fp16_flag,
        "explicit_quantization": plan.explicit_quantization,
        "tf32": not plan.strict_fp32,
        "input_name": input_name,
        "input_format": input_format,
        "profile": profile.as_dict(),
        "onnx": {"path": str(onnx_path), "sha256": onnx_sha256},
        "engine_sha256": engine_sha256,
        "workspace_gb": workspace_gb,
        "timing_cache": str(timing_cache) if timing_cache else None,
        "build_seconds": round(build_seconds, 3),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def read_sidecar(engine_path: str | Path) -> dict[str, Any] | None:
    """Read ``ENGINE.json`` if present.

    Raises:
        UserInputError: the sidecar exists but is not a JSON object.
    """
    path = sidecar_path(engine_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}; delete it or rebuild the engine") from None
    if not isinstance(data, dict):
        raise UserInputError(f"{path} is not a segdeploy engine sidecar; delete it or rebuild the engine")
    return data


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the ONNX input
@dataclass(frozen=True)
class OnnxFacts:
    """What the build needs to know about an ONNX file before TensorRT sees it."""

    input_name: str
    input_dims: tuple[int | None, ...]
    precision: str
    metadata: dict[str, str] = field(default_factory=dict)


def read_onnx_facts(onnx_path: str | Path) -> OnnxFacts:
    """Load an ONNX file's graph (not its external weights) and read input, precision and metadata.

    The float precision is the ``precision`` metadata written by ``segdeploy export``, else fp16 when any
    initializer is FLOAT16. QuantizeLinear/DequantizeLinear nodes make it ``int8`` (FP32 elsewhere) or
    ``int8-fp16`` (FP16 elsewhere), whatever the metadata says: the nodes are what TensorRT builds.

    Raises:
        UserInputError: missing file, not an ONNX model, not exactly one 4-D input, or metadata claiming
            int8 for a file without Q/DQ nodes.
    """
    import onnx

    from segdeploy.artifact import load_onnx

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
    metadata = {p.key: p.value for p in model.metadata_props}
    claimed = normalize_precision(metadata.get("precision"), what="precision metadata")
    quantized = _has_qdq(graph)
    if claimed in QUANTIZED and not quantized:
        raise UserInputError(
            f"{path} says precision {claimed} but has no QuantizeLinear/DequantizeLinear nodes: re-export it with "
            f"`segdeploy export MODEL --precision {claimed} --calib PATH`"
        )
    if claimed is not None:
        fp16 = claimed in ("fp16", "int8-fp16")
    else:
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    precision = ("int8-fp16" if fp16 else "int8") if quantized else ("fp16" if fp16 else "fp32")
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
    sidecar: dict[str, Any]
    plan: BuildPlan
    profile: Profile
    engine_bytes: int
    build_seconds: float
    timing_cache_path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
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
    precision: str | None = None,
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
        precision: ``"fp32"``, ``"fp16"``, ``"int8"`` or ``"int8-fp16"``; default: the ONNX's own precision.
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
        plan=plan, profile=profile, input_name=input_name, trt_version=str(trt.__version__),
        input_format=facts.metadata.get("input_format", "float32-nchw"),
        gpu_name=gpu.name, compute_capability=gpu.compute_capability, onnx_path=onnx_path,
        onnx_sha256=sha256_file(onnx_path), engine_sha256=hashlib.sha256(serialized).hexdigest(),
        workspace_gb=workspace_gb, timing_cache=cache_path, build_seconds=build_seconds,
    )
    side = sidecar_path(engine_path)
    # Both files appear together: the sidecar is renamed into place just before the engine.
    with atomic_output(engine_path) as tmp_engine:
        tmp_engine.write_bytes(serialized)
        write_text_atomic(side, json.dumps(sidecar, indent=2) + "\n")
    if cache_path is not None and cache_out:
        write_bytes_atomic(cache_path, cache_out)
    return BuildResult(engine_path, side, sidecar, plan, profile, len(serialized), build_seconds,
                       cache_path if cache_out else None)


def _check_lint(onnx_path: Path) -> None:
    """Refuse, before TensorRT starts, a file segdeploy's TensorRT lint rejects, naming the first reason."""
    from segdeploy.export.lint import lint_onnx

    report = lint_onnx(onnx_path)
    if not report.ok:
        first = report.errors[0]
        raise UserInputError(f"{onnx_path} is not TensorRT-ready ({report.summary()}): {first.node} "
                             f"({first.op_type}): {first.message}")


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
        raise UserInputError(f"the timing cache {cache_path} would overwrite the engine or its sidecar: pick another path")


def network_flags(trt: Any, plan: BuildPlan) -> int:
    """Network creation flags for ``builder.create_network``.

    The STRONGLY_TYPED enum value differs between lines (1 on 10.x, 0 on 11.x), so the bit is always
    computed from the enum, never written as a number. On 11.x no flag is needed: typing is always strong
    and the flag is deprecated ([PY] 11.0 Builder page, NetworkDefinitionCreationFlag).
    """
    if plan.strongly_typed_flag:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


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

    say(f"building {plan.precision} engine with TensorRT {trt.__version__} (this can take minutes)")
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



def _as_shape(value: ShapeLike | None, which: str) -> Shape | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_shape(value)
    dims = tuple(value)
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims):
        raise UserInputError(f"bad {which} shape {dims}: expected NxCxHxW with positive integers")
    return dims  # type: ignore[return-value]


def _fixed_dims(metadata: Mapping[str, str], graph_shape: Sequence[int | None] | None) -> tuple[int | None, ...]:
    fixed: list[int | None] = list(graph_shape) if graph_shape is not None else [None, None, None, None]
    if len(fixed) != 4:
        raise UserInputError(f"the ONNX input has rank {len(fixed)}; expected NCHW (rank 4)")
    if fixed[1] is None and metadata.get("in_channels"):
        fixed[1] = int(metadata["in_channels"])
    return tuple(fixed)


def _fill_fixed(shape: Sequence[int], fixed: Sequence[int | None]) -> Shape:
    return tuple(int(f) if f is not None else int(s) for s, f in zip(shape, fixed))  # type: ignore[return-value]


def _check_fixed(shape: Shape, fixed: Sequence[int | None], which: str) -> None:
    for axis, (size, want) in enumerate(zip(shape, fixed)):
        if want is not None and size != want:
            expected = "x".join("?" if d is None else str(d) for d in fixed)
            raise UserInputError(
                f"bad {which} shape {format_shape(shape)}: the ONNX input is {expected} "
                f"(axis {axis} is fixed to {want}; re-export with dynamic axes to vary it)"
            )


def _check_order(profile: Profile) -> None:
    names = ("batch", "channels", "height", "width")
    if not profile.min[1] == profile.opt[1] == profile.max[1]:
        raise UserInputError(f"bad profile ({profile}): min, opt and max must have the same channel count")
    for axis, (lo, opt, hi) in enumerate(zip(profile.min, profile.opt, profile.max)):
        if not lo <= opt <= hi:
            raise UserInputError(
                f"bad profile ({profile}): {names[axis]} must satisfy min <= opt <= max, got {lo}, {opt}, {hi}"
            )
