"""What a TensorRT build will do, decided before TensorRT starts: typing and flags per line, and the profile.

Pure functions, testable without TensorRT: :func:`plan_build` (network typing and builder flags for
TensorRT 10.x and 11.x), :func:`network_flags`, :func:`derive_profile` (which input shapes the engine runs).
Sources are cited in ``segdeploy.runtime.trt_build``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from segdeploy.artifact import InputFormat, Metadata, Precision, parse_precision
from segdeploy.errors import MissingDependencyError, UserInputError
from segdeploy.shapes import Shape, check_shape, format_shape, parse_shape

DEFAULT_MIN_SIDE = 32  # the largest total stride in the zoo; used when the ONNX metadata names no min_size

ShapeLike = Shape | Sequence[int] | str

# Explicitly quantized: INT8 where the ONNX has QuantizeLinear/DequantizeLinear, FP32 or FP16 elsewhere.
QUANTIZED = (Precision.INT8, Precision.INT8_FP16)


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
        precision: the engine's precision: FP32, FP16, INT8 (Q/DQ, FP32 elsewhere) or INT8_FP16 (Q/DQ, FP16
            elsewhere).
        strongly_typed: layer types come from the ONNX tensor types.
        strongly_typed_flag: pass ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (10.x only; 11.x is
            always strongly typed and deprecates the flag).
        fp16_flag: set ``BuilderFlag.FP16`` (10.x weak typing only; the flag does not exist on 11.x).
        strict_fp32: clear ``BuilderFlag.TF32`` so an FP32 engine really computes in FP32.
        explicit_quantization: the ONNX carries QuantizeLinear/DequantizeLinear nodes (INT8 engine).
    """

    trt_major: int
    precision: Precision
    strongly_typed: bool
    strongly_typed_flag: bool
    fp16_flag: bool
    strict_fp32: bool
    explicit_quantization: bool = False


def normalize_precision(value: Any, *, what: str = "precision") -> Precision | None:
    """``"FP16"``/``"float16"``/``Precision.FP16`` -> ``Precision.FP16``; None stays None (``parse_precision``)."""
    return None if value is None else parse_precision(value, what)


def check_precision(onnx_precision: Precision | str, requested_precision: Precision | str | None) -> Precision:
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
    onnx_precision = normalize_precision(onnx_precision, what="ONNX precision") or Precision.FP32
    wanted = normalize_precision(requested_precision) or onnx_precision
    if wanted in QUANTIZED and onnx_precision not in QUANTIZED:
        raise UserInputError(
            f"this ONNX has no QuantizeLinear/DequantizeLinear nodes, so TensorRT cannot build {wanted.value} from "
            f"it: export a quantized ONNX with `segdeploy export MODEL --precision {wanted.value} --calib PATH` and "
            "build that"
        )
    if onnx_precision in QUANTIZED and wanted != onnx_precision:
        hint = f"--precision {wanted.value} --calib PATH" if wanted in QUANTIZED else f"--precision {wanted.value}"
        elsewhere = "FP16" if onnx_precision is Precision.INT8_FP16 else "FP32"
        raise UserInputError(
            f"this ONNX is quantized as {onnx_precision.value} (QuantizeLinear/DequantizeLinear nodes, {elsewhere} "
            f"elsewhere), so its engine is {onnx_precision.value}: export the {wanted.value} ONNX with "
            f"`segdeploy export MODEL {hint}` and build that"
        )
    if onnx_precision is Precision.FP16 and wanted is Precision.FP32:
        raise UserInputError(
            "this ONNX stores FP16 weights, so its engine is FP16: build the FP32 ONNX "
            "(`segdeploy export MODEL --precision fp32`) for an FP32 engine"
        )
    return wanted


def plan_build(
    trt_major: int, onnx_precision: Precision | str, requested_precision: Precision | str | None
) -> BuildPlan:
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
        onnx_precision: what the ONNX file stores (:func:`read_onnx_facts`).
        requested_precision: the engine precision asked for, or None for the ONNX's own.

    Returns:
        The :class:`BuildPlan`.

    Raises:
        UserInputError: a precision this TensorRT line cannot give from this ONNX.
        MissingDependencyError: TensorRT older than 10.
    """
    onnx_precision = normalize_precision(onnx_precision, what="ONNX precision") or Precision.FP32
    if trt_major < 10:
        raise MissingDependencyError(f"TensorRT {trt_major}.x is too old: segdeploy needs TensorRT 10.3 or newer")
    wanted = check_precision(onnx_precision, requested_precision)
    if wanted in QUANTIZED:
        return BuildPlan(
            trt_major,
            wanted,
            strongly_typed=True,
            strongly_typed_flag=trt_major < 11,
            fp16_flag=False,
            strict_fp32=False,
            explicit_quantization=True,
        )
    if trt_major >= 11:
        if wanted is Precision.FP16 and onnx_precision is Precision.FP32:
            raise UserInputError(
                f"TensorRT {trt_major} takes precision from the ONNX types (its FP16 builder flag was removed): "
                "export an FP16 ONNX with `segdeploy export MODEL --precision fp16` and build that"
            )
        return BuildPlan(
            trt_major,
            wanted,
            strongly_typed=True,
            strongly_typed_flag=False,
            fp16_flag=False,
            strict_fp32=wanted is Precision.FP32,
        )
    if onnx_precision is Precision.FP16:
        return BuildPlan(
            trt_major, Precision.FP16, strongly_typed=True, strongly_typed_flag=True, fp16_flag=False, strict_fp32=False
        )
    return BuildPlan(
        trt_major,
        wanted,
        strongly_typed=False,
        strongly_typed_flag=False,
        fp16_flag=wanted is Precision.FP16,
        strict_fp32=wanted is Precision.FP32,
    )


def network_flags(trt: Any, plan: BuildPlan) -> int:
    """Network creation flags for ``builder.create_network``.

    The STRONGLY_TYPED enum value differs between lines (1 on 10.x, 0 on 11.x), so the bit is always
    computed from the enum, never written as a number. On 11.x no flag is needed: typing is always strong
    and the flag is deprecated ([PY] 11.0 Builder page, NetworkDefinitionCreationFlag).
    """
    if plan.strongly_typed_flag:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


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
    metadata: Metadata | Mapping[str, str],
    min_shape: ShapeLike | None = None,
    opt_shape: ShapeLike | None = None,
    max_shape: ShapeLike | None = None,
    *,
    graph_shape: Sequence[int | None] | None = None,
) -> Profile:
    """Choose and check the optimization profile, in the layout of the ONNX input (NCHW, or NHWC for raw frames).

    See :func:`_derive_nchw` for the defaults. Every height and width is checked against the sizes the
    model accepts (``size_multiple`` in the metadata).

    Args:
        metadata: the file's :class:`Metadata` (a raw ``metadata_props`` mapping is parsed into one).
    """
    if not isinstance(metadata, Metadata):
        metadata = Metadata.from_props(dict(metadata))
    nhwc = metadata.preprocessing.input_format is InputFormat.UINT8_NHWC

    def to_nchw(shape: Any) -> Any:
        if shape is None or not nhwc:
            return shape
        dims = parse_shape(shape) if isinstance(shape, str) else tuple(shape)
        return (dims[0], dims[3], dims[1], dims[2])

    def to_file(shape: Shape) -> Shape:
        return (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape

    nchw = _derive_nchw(
        metadata,
        to_nchw(min_shape),
        to_nchw(opt_shape),
        to_nchw(max_shape),
        graph_shape=to_nchw(graph_shape) if graph_shape is not None else None,
    )
    multiple = max(metadata.size_multiple, 1)
    for which, shape in (("min", nchw.min), ("opt", nchw.opt), ("max", nchw.max)):
        if shape[2] % multiple or shape[3] % multiple:
            raise UserInputError(
                f"bad {which} shape {format_shape(to_file(shape))}: this model takes only heights "
                f"and widths that are multiples of {multiple}"
            )
    return Profile(to_file(nchw.min), to_file(nchw.opt), to_file(nchw.max))


def _derive_nchw(
    metadata: Metadata,
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
        metadata: the file's metadata (``trace_shape``, ``in_channels``, ``min_size``; all optional: a
            ``min_size`` of 1, the unknown minimum, is taken as ``DEFAULT_MIN_SIDE``).
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
        if metadata.trace_shape is None:
            raise UserInputError(
                "cannot choose the optimization shape: the ONNX has no trace_shape metadata; pass --opt-shape NxCxHxW"
            )
        opt = _fill_fixed(metadata.trace_shape, fixed)
    min_side = metadata.min_size if metadata.min_size > 1 else DEFAULT_MIN_SIDE
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


def _as_shape(value: ShapeLike | None, which: str) -> Shape | None:
    if value is None:
        return None
    if isinstance(value, str):
        return parse_shape(value)
    dims = tuple(value)
    if len(dims) != 4 or not all(isinstance(d, int) and d > 0 for d in dims):
        raise UserInputError(f"bad {which} shape {dims}: expected NxCxHxW with positive integers")
    return dims  # type: ignore[return-value]


def _fixed_dims(metadata: Metadata, graph_shape: Sequence[int | None] | None) -> tuple[int | None, ...]:
    fixed: list[int | None] = list(graph_shape) if graph_shape is not None else [None, None, None, None]
    if len(fixed) != 4:
        raise UserInputError(f"the ONNX input has rank {len(fixed)}; expected NCHW (rank 4)")
    if fixed[1] is None and metadata.in_channels:
        fixed[1] = metadata.in_channels
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
