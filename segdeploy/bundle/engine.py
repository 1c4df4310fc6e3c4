"""A TensorRT plan for a bundle: its facts, from its sidecar or the command line, checked against the ONNX.

A plan is opaque bytes: what it runs on (TensorRT version, compute capability) and which shapes it takes
(its optimization profile) must come from somewhere. ``segdeploy build`` writes them into a sidecar that
also records the sha256 of the ONNX it was built from and of the plan itself, which proves the pairing;
a plan built elsewhere (trtexec, another tool) can be bundled with the same facts given explicitly.
Either way the profile must be one the ONNX can have: its fixed dimensions, its channels, and sizes the
model takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from segdeploy.artifact import INPUT_NAME, Metadata, Precision
from segdeploy.bundle.manifest import PLAN, EngineFacts, EngineInfo, TensorProfile
from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class EngineFactsGiven:
    """What a plan without a sidecar is, as the user states it (shapes in the ONNX input's layout)."""

    tensorrt_version: str
    compute_capability: str
    min_shape: str | None = None
    opt_shape: str | None = None
    max_shape: str | None = None
    gpu_name: str = "unknown"
    precision: Precision | None = None


def read_engine(
    engine: Path, onnx_path: Path, model: onnx.ModelProto, metadata: Metadata, given: EngineFactsGiven | None
) -> tuple[EngineInfo, TensorProfile]:
    """The engine section and profile of a bundle's plan.

    Raises:
        UserInputError: a missing or empty plan; no sidecar and no facts given; facts given beside a sidecar;
            a sidecar that describes another ONNX or other plan bytes; a profile the ONNX cannot have.
    """
    from segdeploy.fileio import sha256_file
    from segdeploy.runtime.sidecar import EngineSidecar, sidecar_path

    if not engine.is_file():
        raise UserInputError(f"engine {engine} does not exist")
    if engine.stat().st_size == 0:
        raise UserInputError(f"engine {engine} is empty")
    sidecar = EngineSidecar.read(engine)
    if sidecar is not None and given is not None:
        raise UserInputError(
            f"engine {engine} has a sidecar ({sidecar_path(engine)}): its facts are used; drop --trt-version, "
            "--compute-capability and the shapes"
        )
    if sidecar is None and given is None:
        raise UserInputError(
            f"engine {engine} has no sidecar {sidecar_path(engine)}: build it with `segdeploy build` (which "
            "writes one), or state what it is with --trt-version, --compute-capability and "
            "--min-shape/--opt-shape/--max-shape"
        )
    props = {p.key: p.value for p in model.metadata_props}
    graph_shape = _graph_shape(model)
    fmt = metadata.preprocessing.input_format
    if sidecar is not None:
        if sidecar.onnx_sha256 != sha256_file(onnx_path):
            raise UserInputError(
                f"engine {engine} was built from another ONNX file than {onnx_path} ({sidecar.onnx_path}); "
                "bundle the ONNX it was built from"
            )
        if sidecar.engine_sha256 != sha256_file(engine):
            raise UserInputError(f"engine {engine} is not the file its sidecar describes (sha256 differs): rebuild it")
        if sidecar.input_format is not fmt or sidecar.input_name != INPUT_NAME:
            raise UserInputError(
                f"engine {engine} takes {sidecar.input_format.value} input {sidecar.input_name!r}, {onnx_path} "
                f"takes {fmt.value} {INPUT_NAME!r}"
            )
        shapes = (sidecar.profile.min, sidecar.profile.opt, sidecar.profile.max)
        info = EngineInfo(
            PLAN, sidecar.tensorrt_version, sidecar.gpu_name, sidecar.compute_capability, sidecar.precision
        )
        where = f"the profile in {sidecar_path(engine)}"
    else:
        assert given is not None
        _check_facts(given)
        shapes = (given.min_shape, given.opt_shape, given.max_shape)  # type: ignore[assignment]
        if any(s is None for s in shapes) and not all(d is not None for d in graph_shape):
            raise UserInputError(
                f"{onnx_path} has dynamic axes: give the plan's profile with --min-shape, --opt-shape and --max-shape"
            )
        precision = given.precision or metadata.precision
        info = EngineInfo(
            PLAN, given.tensorrt_version, given.gpu_name, given.compute_capability, precision, EngineFacts.COMMAND_LINE
        )
        where = "the profile given"
    return info, _check_profile(props, shapes, graph_shape, metadata, where)


def _check_facts(given: EngineFactsGiven) -> None:
    version = given.tensorrt_version.strip()
    if not version or not all(part.isdigit() for part in version.split(".")) or len(version.split(".")) < 2:
        raise UserInputError(f"bad --trt-version {given.tensorrt_version!r}: a TensorRT version like 10.3.0.30")
    cc = given.compute_capability.strip().split(".")
    if len(cc) != 2 or not all(part.isdigit() for part in cc):
        raise UserInputError(f"bad --compute-capability {given.compute_capability!r}: MAJOR.MINOR, like 8.7")


def _graph_shape(model: onnx.ModelProto) -> tuple[int | None, ...]:
    tensor = next(v for v in model.graph.input if v.name == INPUT_NAME).type.tensor_type
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim)


def _check_profile(
    props: dict[str, str], shapes: tuple, graph_shape: tuple[int | None, ...], metadata: Metadata, where: str
) -> TensorProfile:
    """A profile the ONNX can have: its fixed dims and channels, ordered, and sizes the model takes."""
    from segdeploy.runtime.trt_plan import derive_profile
    from segdeploy.shapes import format_shape

    try:
        profile = derive_profile(props, *shapes, graph_shape=graph_shape)
    except UserInputError as exc:
        raise UserInputError(f"{where} does not fit the ONNX: {exc}") from None
    layout = metadata.preprocessing.input_format.layout
    for which, shape in (("min", profile.min), ("opt", profile.opt), ("max", profile.max)):
        for side in (shape[layout.index("H")], shape[layout.index("W")]):
            if side < metadata.min_size or (metadata.max_size is not None and side > metadata.max_size):
                raise UserInputError(
                    f"{where} does not fit the ONNX: {which} {format_shape(shape)} has a side outside the sizes "
                    f"the model takes (at least {metadata.min_size}"
                    + (f", at most {metadata.max_size})" if metadata.max_size else ")")
                )
    return TensorProfile(tuple(profile.min), tuple(profile.opt), tuple(profile.max))
