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

from segdeploy.bundle.manifest import InputSpec, TritonKind
from segdeploy.bundle.tensors import TensorInfo
from segdeploy.errors import MissingDependencyError, first_line

ONNX_BACKEND = "onnxruntime"
ONNX_PLATFORM = "onnxruntime_onnx"
TENSORRT_BACKEND = "tensorrt"
TENSORRT_PLATFORM = "tensorrt_plan"
TRT_SUFFIX = "_trt"
VERSION = "1"
"""The one model version a bundle's Triton models have (``triton/NAME/1/``)."""

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


def model_dirs(name: str, with_engine: bool) -> dict[str, TritonKind]:
    """Triton model name -> what it serves."""
    dirs = {name: TritonKind.ONNX}
    if with_engine:
        dirs[name + TRT_SUFFIX] = TritonKind.PLAN
    return dirs


def max_batch_size(spec: InputSpec, default: int) -> int:
    """0 for a fixed batch (the dims then carry it); else the TensorRT profile's largest batch, or ``default``."""
    if not spec.dynamic("N"):
        return 0
    return int(spec.tensorrt_profile.max[0]) if spec.tensorrt_profile else default


def config_text(
    model_name: str, kind: TritonKind, inputs: list[TensorInfo], outputs: list[TensorInfo], batch: int, comment: str
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
    lines.append(f'backend: "{ONNX_BACKEND}"' if kind is TritonKind.ONNX else f'platform: "{TENSORRT_PLATFORM}"')
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
    kind: TritonKind,
    inputs: list[TensorInfo],
    outputs: list[TensorInfo],
    *,
    spec: InputSpec,
    num_classes: int,
    classes_axis: int | None,
) -> list[str]:
    """Problems of one Triton model directory against the ONNX it serves (empty: none).

    What Triton itself refuses when it loads the model is refused here too: a config that does not parse,
    a backend or platform that does not fit the file (one that names neither gets the backend Triton
    infers from the file), a ``version_policy`` naming a version the directory lacks, the scheduling and
    tensor-flag rules Triton checks when it reads the config, dims (and a ``reshape``) that contradict the
    model (fixed sizes it does not take, or outside a plan's profile), a batch a plan cannot run, and a
    ``model_warmup`` whose inputs do not fit. What Triton would take but the bundle cannot serve is
    refused as well: sequence batching (``client.py`` sends no correlation ID) and ragged batching.

    Args:
        model_dir: ``triton/NAME`` or ``triton/NAME_trt``.
        kind: what the model serves.
        inputs, outputs: the ONNX graph's tensors.
        spec: the manifest's input (valid sizes, the engine profile).
        num_classes: the bundle's class count; ``classes_axis``: the main output's class axis (None: class map).

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
    bad = lambda message: problems.append(f"{where}: {message}")
    if config.name not in ("", model_dir.name):
        bad(f"name {config.name!r} is not the directory's {model_dir.name!r}")
    backend, platform = _backend(config, model_dir)
    if kind is TritonKind.ONNX:
        fits = backend in ("", ONNX_BACKEND) and platform in ("", ONNX_PLATFORM) and (backend or platform)
        expected = f'backend "{ONNX_BACKEND}" or platform "{ONNX_PLATFORM}"'
    else:
        fits = backend in ("", TENSORRT_BACKEND) and platform in ("", TENSORRT_PLATFORM) and (backend or platform)
        expected = f'platform "{TENSORRT_PLATFORM}" or backend "{TENSORRT_BACKEND}"'
    if not fits:
        bad(f"backend {backend!r} / platform {platform!r} does not serve model.{kind.value}: {expected}")
    if config.default_model_filename not in ("", f"model.{kind.value}"):
        bad(f"default_model_filename {config.default_model_filename!r}, the model is {VERSION}/model.{kind.value}")
    problems += [f"{where}: {p}" for p in _versions(config, model_dir)]

    batch = int(config.max_batch_size)
    profile = spec.tensorrt_profile if kind is TritonKind.PLAN else None
    if batch < 0:
        bad(f"max_batch_size {batch} is negative")
    if batch > 0 and inputs and inputs[0].dims and isinstance(inputs[0].dims[0], int):
        bad(f"max_batch_size {batch} > 0 but the model's batch is fixed at {inputs[0].dims[0]}")
    if batch > 0 and profile is not None and batch > profile.max[0]:
        bad(f"max_batch_size {batch} exceeds the engine profile's largest batch {profile.max[0]}")
    problems += [f"{where}: {p}" for p in _scheduling(config, batch)]

    type_names = {value: name for name, value in model_config_module().DataType.items()}
    for section, declared, actual in (("input", config.input, inputs), ("output", config.output, outputs)):
        by_name = {t.name: t for t in actual}
        if len(declared) != len(actual):
            bad(f"{len(declared)} {section}s, the model has {len(actual)} ({', '.join(by_name)})")
        for entry in declared:
            tensor = by_name.get(entry.name)
            if tensor is None:
                bad(f"{section} {entry.name!r} is not a model {section} ({', '.join(by_name)})")
                continue
            dtype = type_names.get(entry.data_type, str(entry.data_type))
            if dtype != TRITON_TYPES.get(tensor.dtype):
                bad(
                    f"{section} {entry.name!r} has data_type {dtype}, the model's is "
                    f"{tensor.dtype} ({TRITON_TYPES.get(tensor.dtype, 'no Triton type')})"
                )
            problems += [f"{where}: {p}" for p in _tensor_flags(section, entry, kind)]
            main_output = section == "output" and tensor.name == outputs[0].name
            # The client sends and gets `dims`; with a `reshape` the model sees that shape: both must fit it.
            shapes = {section: list(entry.dims)}
            if entry.HasField("reshape"):
                reshape = shapes[f"{section} reshape"] = list(entry.reshape.shape)
                if _chunks(shapes[section]) != _chunks(reshape):
                    bad(f"{section} {entry.name!r} reshape {reshape} does not hold the elements of {shapes[section]}")
            for label, shape in shapes.items():
                problems += [
                    f"{where}: {p}"
                    for p in _check_dims(
                        label, entry.name, shape, tensor, batch, num_classes if main_output else None,
                        classes_axis, spec if section == "input" else None, profile,
                    )
                ]  # fmt: skip
    if config.batch_input or config.batch_output:
        bad("batch_input/batch_output are for ragged batching; the model takes whole images in its one input")
    problems += [f"{where}: {p}" for p in _check_warmup(config, model_dir, inputs, batch, type_names, spec)]
    return problems


def _backend(config: Any, model_dir: Path) -> tuple[str, str]:
    """(backend, platform) as Triton completes them: naming neither, the backend of ``default_model_filename``
    or else of the model file in the first version directory (sorted by name, as Triton takes it)."""
    backend, platform = config.backend, config.platform
    if not backend and not platform:
        file_name = config.default_model_filename
        if not file_name:
            subdirs = sorted((p for p in model_dir.iterdir() if p.is_dir()), key=lambda p: p.name)
            present = {p.name for p in subdirs[0].iterdir() if p.is_file()} if subdirs else set()
            file_name = next((f for f in ("model.plan", "model.onnx") if f in present), "")
        backend = {"model.plan": TENSORRT_BACKEND, "model.onnx": ONNX_BACKEND}.get(file_name, "")
    return backend, platform


def _scheduling(config: Any, batch: int) -> list[str]:
    """The scheduler settings Triton validates when it reads the config, and the ones the bundle cannot serve."""
    problems = []
    if config.HasField("sequence_batching"):
        problems.append("sequence_batching needs a correlation ID in every request; the bundle's client.py sends none")
    if config.HasField("ensemble_scheduling"):
        problems.append("ensemble_scheduling is for ensembles; this model runs one file")
    if config.response_cache.enable and config.model_transaction_policy.decoupled:
        problems.append("response_cache cannot serve a decoupled model (model_transaction_policy)")
    if not config.HasField("dynamic_batching"):
        return problems
    dynamic = config.dynamic_batching
    sizes = [s for s in dynamic.preferred_batch_size if not 1 <= s <= batch]
    if sizes:
        problems.append(f"dynamic_batching preferred_batch_size {sizes} is outside 1..max_batch_size {batch}")
    levels = dynamic.priority_levels
    if levels and not 1 <= dynamic.default_priority_level <= levels:
        problems.append(
            f"dynamic_batching default_priority_level {dynamic.default_priority_level} is outside 1..{levels}"
        )
    outside = sorted(k for k in dynamic.priority_queue_policy if not 1 <= k <= levels)
    if levels and outside:
        problems.append(f"dynamic_batching priority_queue_policy names level(s) {outside} outside 1..{levels}")
    if dynamic.preserve_ordering:
        policies = [dynamic.default_queue_policy, *dynamic.priority_queue_policy.values()]
        delay = type(dynamic.default_queue_policy).DELAY
        if levels > 1 or any(p.default_timeout_microseconds and p.timeout_action == delay for p in policies):
            problems.append("dynamic_batching preserve_ordering allows one priority level and no DELAY timeout action")
    return problems


def _tensor_flags(section: str, entry: Any, kind: TritonKind) -> list[str]:
    """Flags on one input/output entry that Triton checks or the model cannot honour."""
    name, problems = entry.name, []
    if entry.is_shape_tensor:
        problems.append(f"{section} {name!r} is_shape_tensor: the model's tensors are not shape tensors")
    # is_non_linear_format_io is newer than some tritonclient releases segdeploy[triton] allows
    if getattr(entry, "is_non_linear_format_io", False) and (kind is not TritonKind.PLAN or len(entry.dims) != 3):
        problems.append(f"{section} {name!r} is_non_linear_format_io needs a TensorRT plan and 3 dims")
    if section == "input":
        if entry.format != type(entry).FORMAT_NONE and len(entry.dims) != 3:
            problems.append(f"{section} {name!r} format {type(entry).Format.Name(entry.format)} needs 3 dims")
        if entry.allow_ragged_batch:
            problems.append(f"{section} {name!r} allow_ragged_batch: the model takes whole images, not ragged batches")
    return problems


def _chunks(shape: Any) -> list[int]:
    """Element counts between the ``-1`` dims: Triton's test that a ``reshape`` holds the same elements."""
    chunks, count = [], 1
    for dim in shape:
        if dim == -1:
            chunks.append(count)
            count = 1
        else:
            count *= int(dim)
    return chunks + [count]


def _versions(config: Any, model_dir: Path) -> list[str]:
    """A version policy Triton can serve from the directory's versions (Triton fails the load otherwise)."""
    present = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if which == "specific":
        missing = [v for v in policy.specific.versions if v not in present]
        if missing or not policy.specific.versions:
            return [f"version_policy names version(s) {missing or '(none)'}; the model has {present}"]
    if which == "latest" and policy.latest.num_versions < 1:
        return [f"version_policy latest num_versions {policy.latest.num_versions} serves no version"]
    return []


def _check_dims(
    section: str,
    name: str,
    dims: list[int],
    tensor: TensorInfo,
    batch: int,
    num_classes: int | None,
    classes_axis: int | None,
    spec: InputSpec | None,
    profile: Any,
) -> list[str]:
    full = ([-1] if batch > 0 else []) + dims
    model_dims = "[" + ", ".join(str(d) for d in tensor.dims) + "]"
    if len(full) != tensor.rank:
        return [
            f"{section} {name!r} has rank {len(full)} with max_batch_size {batch} (dims {dims}), "
            f"the model's is {tensor.rank} {model_dims}"
        ]
    problems = []
    if num_classes is not None and classes_axis is not None and full[classes_axis] not in (-1, num_classes):
        problems.append(f"{section} {name!r} has {full[classes_axis]} classes, the model has {num_classes}")
    for axis, (declared, actual) in enumerate(zip(full, tensor.dims)):
        if axis == 0 and batch > 0:
            continue
        if declared == 0 or declared < -1:
            problems.append(f"{section} {name!r} dim {declared} is not a size or -1")
        elif isinstance(actual, int) and declared != actual:
            problems.append(f"{section} {name!r} dims {dims} disagree with the model's {model_dims}")
            break
        elif spec is not None and declared != -1 and not isinstance(actual, int):
            problems += _fixed_size(section, name, axis, declared, spec, profile)
    return problems


def _fixed_size(section: str, name: str, axis: int, size: int, spec: InputSpec, profile: Any) -> list[str]:
    """A dim a config fixes where the model is free: a size the model takes, inside a plan's profile."""
    letter = spec.layout[axis]
    if letter in "HW" and not spec.valid_side(size):
        rule = f"multiples of {spec.size_multiple}, >= {spec.min_size}" + (
            f", <= {spec.max_size}" if spec.max_size else ""
        )
        return [
            f"{section} {name!r} fixes {'height' if letter == 'H' else 'width'} {size}, "
            f"not a size the model takes ({rule})"
        ]
    if profile is not None and not profile.min[axis] <= size <= profile.max[axis]:
        return [f"{section} {name!r} dim {size} is outside the engine profile {profile.min[axis]}..{profile.max[axis]}"]
    return []


def _check_warmup(
    config: Any, model_dir: Path, inputs: list[TensorInfo], batch: int, type_names: dict[int, str], spec: InputSpec
) -> list[str]:
    """``model_warmup`` samples Triton can run: every model input, its type, a full shape the model takes."""
    problems = []
    by_name = {t.name: t for t in inputs}
    for warmup in config.model_warmup:
        label = f"model_warmup {warmup.name!r}"
        size = int(warmup.batch_size)
        if (batch == 0 and size != 1) or (batch > 0 and not 1 <= size <= batch):
            problems.append(f"{label} batch_size {size} does not fit max_batch_size {batch}")
        missing = sorted(set(by_name) - set(warmup.inputs))
        if missing:
            problems.append(f"{label} lacks input(s) {', '.join(missing)}")
        for input_name, sample in warmup.inputs.items():
            tensor = by_name.get(input_name)
            if tensor is None:
                problems.append(f"{label} input {input_name!r} is not a model input")
                continue
            dtype = type_names.get(sample.data_type, str(sample.data_type))
            if dtype != TRITON_TYPES.get(tensor.dtype):
                problems.append(f"{label} input {input_name!r} is {dtype}, the model takes {tensor.dtype}")
            dims = ([size] if batch > 0 else []) + list(sample.dims)
            bad_dims = len(dims) != tensor.rank or any(
                d < 1
                or (isinstance(a, int) and d != a)
                or (i > 0 and spec.layout[i] in "HW" and not spec.valid_side(d))
                for i, (d, a) in enumerate(zip(dims, tensor.dims))
            )
            if bad_dims:
                problems.append(
                    f"{label} input {input_name!r} dims {list(sample.dims)} are not a shape the model takes"
                )
            source = sample.WhichOneof("input_data_type")
            if source is None:
                problems.append(f"{label} input {input_name!r} has no zero_data, random_data or input_data_file")
            elif source == "input_data_file" and not (model_dir / "warmup" / sample.input_data_file).is_file():
                problems.append(f"{label} input {input_name!r} names warmup/{sample.input_data_file}, which is missing")
    return problems
