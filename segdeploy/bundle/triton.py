"""Triton Inference Server model configurations: written as text, checked with Triton's own schema.

A bundle holds a Triton model repository under ``triton/``: ``NAME`` (ONNX Runtime backend) and, with an
engine, ``NAME_trt`` (TensorRT backend). With ``max_batch_size > 0`` Triton adds the batch axis itself, so
``dims`` leave it out; ``-1`` marks a dimension the model leaves free.

The check parses ``config.pbtxt`` with the ``ModelConfig`` message Triton itself uses. The ``tritonclient``
wheel ships it as ``tritonclient/grpc/model_config_pb2.py``; importing ``tritonclient.grpc`` would need grpcio,
so the one file is loaded by path and needs only protobuf.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from segdeploy.bundle.tensors import TensorInfo
from segdeploy.errors import MissingDependencyError, first_line

ONNX_BACKEND = "onnxruntime"
TENSORRT_PLATFORM = "tensorrt_plan"
TRT_SUFFIX = "_trt"

TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}
"""NumPy element type name -> Triton ``DataType``."""

INSTALL_HINT = "pip install 'segdeploy[triton]'"


def model_dirs(name: str, with_engine: bool) -> dict[str, str]:
    """Triton model name -> what it runs (``onnx`` or ``plan``)."""
    dirs = {name: "onnx"}
    if with_engine:
        dirs[name + TRT_SUFFIX] = "plan"
    return dirs


def max_batch_size(dynamic_batch: bool, profile: dict[str, list[int]] | None, default: int) -> int:
    """0 for a fixed batch (the dims then carry it); else the TensorRT profile's largest batch, or ``default``."""
    if not dynamic_batch:
        return 0
    return int(profile["max"][0]) if profile else default


def config_text(
    model_name: str, kind: str, inputs: list[TensorInfo], outputs: list[TensorInfo], batch: int, comment: str
) -> str:
    """``config.pbtxt`` for one model.

    Args:
        model_name: the model's directory name.
        kind: ``onnx`` (ONNX Runtime backend) or ``plan`` (TensorRT backend).
        inputs, outputs: the ONNX graph's tensors (a plan has the same names, types and ranks).
        batch: ``max_batch_size`` (0: no batching by Triton, full shapes in ``dims``).
        comment: one line said at the top.
    """
    lines = [f"# {comment}", f'name: "{model_name}"']
    lines.append(f'backend: "{ONNX_BACKEND}"' if kind == "onnx" else f'platform: "{TENSORRT_PLATFORM}"')
    lines.append(f"max_batch_size: {batch}")
    for section, tensors in (("input", inputs), ("output", outputs)):
        lines.append(f"{section} [")
        for i, tensor in enumerate(tensors):
            dims = tensor.dims[1:] if batch > 0 else tensor.dims
            dims_text = ", ".join(str(d) if isinstance(d, int) else "-1" for d in dims)
            lines += [
                "  {",
                f'    name: "{tensor.name}"',
                f"    data_type: {TRITON_TYPES[tensor.dtype]}",
                f"    dims: [ {dims_text} ]",
                "  }" + ("," if i < len(tensors) - 1 else ""),
            ]
        lines.append("]")
    if batch > 0:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=1)
def model_config_module() -> ModuleType:
    """Triton's ``model_config_pb2`` from the installed ``tritonclient`` wheel, loaded by file path.

    Raises:
        MissingDependencyError: tritonclient (or protobuf) is not installed.
    """
    spec = importlib.util.find_spec("tritonclient")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    path = next(
        (
            Path(p) / "grpc" / "model_config_pb2.py"
            for p in locations
            if (Path(p) / "grpc" / "model_config_pb2.py").is_file()
        ),
        None,
    )
    if path is None:
        raise MissingDependencyError(f"checking Triton configs needs Triton's ModelConfig schema: {INSTALL_HINT}")
    module_spec = importlib.util.spec_from_file_location("segdeploy_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
    try:
        module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    except ImportError as exc:
        raise MissingDependencyError(
            f"Triton's ModelConfig schema needs protobuf ({first_line(exc)}): {INSTALL_HINT}"
        ) from None
    return module


def parse_config(text: str) -> Any:
    """Parse ``config.pbtxt`` text into Triton's ``ModelConfig``.

    Raises:
        ValueError: the text does not fit the schema (unknown field, bad enum, syntax), with protobuf's message.
        MissingDependencyError: no schema.
    """
    from google.protobuf import text_format

    module = model_config_module()
    try:
        return text_format.Parse(text, module.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(first_line(exc)) from None


def check_model(
    model_dir: Path,
    kind: str,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    *,
    num_classes: int,
    classes_axis: int | None,
    profile: dict[str, list[int]] | None,
) -> list[str]:
    """Problems of one Triton model directory against the ONNX it serves (empty: none).

    Args:
        model_dir: ``triton/NAME`` or ``triton/NAME_trt``.
        kind: ``onnx`` or ``plan``.
        inputs, outputs: the ONNX graph's tensors.
        num_classes: the bundle's class count; ``classes_axis``: the main output's class axis (None: class map).
        profile: the engine's TensorRT profile (bounds a plan's batch).

    Raises:
        MissingDependencyError: no Triton schema.
    """
    where = f"triton/{model_dir.name}/config.pbtxt"
    path = model_dir / "config.pbtxt"
    if not path.is_file():
        return [f"{where} is missing"]
    try:
        config = parse_config(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"{where} does not parse as a Triton ModelConfig: {exc}"]
    problems: list[str] = []
    if config.name != model_dir.name:
        problems.append(f"{where}: name {config.name!r} is not the directory's {model_dir.name!r}")
    if kind == "onnx" and (config.backend != ONNX_BACKEND or config.platform not in ("", "onnxruntime_onnx")):
        problems.append(
            f"{where}: backend {config.backend!r} / platform {config.platform!r}, expected backend {ONNX_BACKEND!r}"
        )
    if kind == "plan" and config.platform != TENSORRT_PLATFORM and config.backend != "tensorrt":
        problems.append(f"{where}: platform {config.platform!r}, expected {TENSORRT_PLATFORM!r}")
    if config.default_model_filename not in ("", f"model.{kind}"):
        problems.append(
            f"{where}: default_model_filename {config.default_model_filename!r}, the model is 1/model.{kind}"
        )

    batch = int(config.max_batch_size)
    if batch < 0:
        problems.append(f"{where}: max_batch_size {batch} is negative")
    if batch > 0 and inputs and inputs[0].dims and isinstance(inputs[0].dims[0], int):
        problems.append(f"{where}: max_batch_size {batch} > 0 but the model's batch is fixed at {inputs[0].dims[0]}")
    if batch > 0 and profile is not None and kind == "plan" and batch > int(profile["max"][0]):
        problems.append(
            f"{where}: max_batch_size {batch} exceeds the engine profile's largest batch {profile['max'][0]}"
        )
    if batch > 0 and config.HasField("sequence_batching"):
        problems.append(f"{where}: sequence batching does not apply to a segmentation model")
    if batch == 0 and config.HasField("dynamic_batching"):
        problems.append(f"{where}: dynamic_batching needs max_batch_size > 0")

    type_names = {value: name for name, value in model_config_module().DataType.items()}
    for section, declared, actual in (("input", config.input, inputs), ("output", config.output, outputs)):
        by_name = {t.name: t for t in actual}
        if len(declared) != len(actual):
            problems.append(f"{where}: {len(declared)} {section}s, the model has {len(actual)} ({', '.join(by_name)})")
        for entry in declared:
            tensor = by_name.get(entry.name)
            if tensor is None:
                problems.append(f"{where}: {section} {entry.name!r} is not a model {section} ({', '.join(by_name)})")
                continue
            dtype = type_names.get(entry.data_type, str(entry.data_type))
            if dtype != TRITON_TYPES.get(tensor.dtype):
                problems.append(
                    f"{where}: {section} {entry.name!r} has data_type {dtype}, the model's is "
                    f"{tensor.dtype} ({TRITON_TYPES.get(tensor.dtype, 'no Triton type')})"
                )
            problems += _check_dims(
                where,
                section,
                entry.name,
                list(entry.dims),
                tensor,
                batch,
                num_classes if section == "output" and tensor.name == outputs[0].name else None,
                classes_axis,
            )
    return problems


def _check_dims(
    where: str,
    section: str,
    name: str,
    dims: list[int],
    tensor: TensorInfo,
    batch: int,
    num_classes: int | None,
    classes_axis: int | None,
) -> list[str]:
    full = ([-1] if batch > 0 else []) + dims
    model_dims = "[" + ", ".join(str(d) for d in tensor.dims) + "]"
    if len(full) != tensor.rank:
        return [
            (
                f"{where}: {section} {name!r} has rank {len(full)} with max_batch_size {batch} (dims {dims}), "
                f"the model's is {tensor.rank} {model_dims}"
            )
        ]
    problems = []
    if num_classes is not None and classes_axis is not None and full[classes_axis] not in (-1, num_classes):
        problems.append(f"{where}: {section} {name!r} has {full[classes_axis]} classes, the model has {num_classes}")
    for axis, (declared, actual) in enumerate(zip(full, tensor.dims)):
        if axis == 0 and batch > 0:
            continue
        if declared == 0 or declared < -1:
            problems.append(f"{where}: {section} {name!r} dim {declared} is not a size or -1")
        elif isinstance(actual, int) and declared != actual:
            problems.append(f"{where}: {section} {name!r} dims {dims} disagree with the model's {model_dims}")
            break
    return problems
