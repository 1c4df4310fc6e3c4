"""PyTorch -> ONNX: capture, graph rewrites, export, opset, simplify, check, lint, verify.

``export_onnx`` is the whole pipeline behind ``segdeploy export``::

    torch.export (dynamic N/H/W, example sizes >= 2)
      -> rewrites (segdeploy.export.rewrites), checked against the original in PyTorch
      -> torch.onnx.export(dynamo=True) at opset 18 -> exact requested opset
      -> onnxsim -> metadata -> [FP16] -> onnx.checker(full_check)
      -> lint for TensorRT -> verify in ONNX Runtime -> atomic write
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy._version import __version__
from segdeploy.errors import ExportError, SegdeployError, UserInputError, VerificationError, first_line
from segdeploy.export.opset import SUPPORTED_OPSETS
from segdeploy.fileio import check_output_path
from segdeploy.shapes import Shape, check_shape, format_shape

if TYPE_CHECKING:
    import onnx
    import torch
    from torch import nn

DYNAMIC_AXES = {0: "batch", 2: "height", 3: "width"}
"""Names of the dynamic input/output axes (unless ``dynamic=False``)."""

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
_EXPORTER_OPSET = 18  # the opset torch's exporter writes natively
STAGES = ("capture", "rewrite", "onnx", "simplify", "check", "lint", "verify")

METADATA_KEYS = {
    "architecture": "zoo name, or file.py:factory for user modules, or the module's class name",
    "num_classes": "output channels of the logits",
    "in_channels": "input image channels",
    "trace_shape": "the input shape the user asked for, NxCxHxW",
    "dynamic_axes": "comma-separated input axes that are dynamic, e.g. 'batch,height,width' ('' when static)",
    "min_size": "smallest height/width the model accepts",
    "rewrites": "comma-separated segdeploy rewrites applied ('' when none)",
    "precision": "fp32 or fp16",
    "opset": "default-domain ONNX opset",
    "segdeploy_version": "version of segdeploy that wrote the file",
}
"""The ``metadata_props`` segdeploy writes, all strings (see ``read_metadata``)."""


@dataclass
class ExportResult:
    """What ``export_onnx`` wrote and what it found on the way."""

    path: Path
    opset: int
    ir_version: int
    input_shape: Shape
    dynamic: bool
    precision: str
    rewrites: list[str]
    metadata: dict[str, str]
    lint: Any = None  # segdeploy.export.lint.LintReport | None
    verification: Any = None  # segdeploy.verify.VerificationReport | None
    fp32_nodes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what ``segdeploy export --report`` writes)."""
        return {
            "path": str(self.path),
            "opset": self.opset,
            "ir_version": self.ir_version,
            "input_shape": format_shape(self.input_shape),
            "dynamic": self.dynamic,
            "precision": self.precision,
            "rewrites": list(self.rewrites),
            "metadata": dict(self.metadata),
            "lint": _to_dict(self.lint),
            "verification": _to_dict(self.verification),
            "fp32_nodes": list(self.fp32_nodes),
            "warnings": list(self.warnings),
            "seconds": round(self.seconds, 3),
        }


def _to_dict(report: Any) -> Any:
    return report.to_dict() if report is not None and hasattr(report, "to_dict") else None


def read_metadata(path_or_model: str | os.PathLike[str] | onnx.ModelProto) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model as a dict (keys: ``METADATA_KEYS``).

    Raises:
        UserInputError: the file is missing or not ONNX.
    """
    from segdeploy.export.lint import load_onnx

    model = load_onnx(path_or_model)
    return {prop.key: prop.value for prop in model.metadata_props}


def export_onnx(
    model_or_name: nn.Module | str,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    opset: int = 17,
    dynamic: bool = True,
    precision: str = "fp32",
    simplify: bool = True,
    verify: bool = True,
    num_classes: int = 21,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a segmentation model to an ONNX file TensorRT's parser accepts, and prove parity.

    Args:
        model_or_name: an ``nn.Module``, a zoo name or ``path/to/file.py:factory``.
        path: the ``.onnx`` file to write (atomically; not written if verification fails).
        input_shape: ``(N, C, H, W)`` recorded as the trace shape and used for verification.
        opset: default-domain opset to write, 13 to 20.
        dynamic: dynamic ``batch``/``height``/``width`` axes; ``False`` fixes ``input_shape``.
        precision: ``"fp32"`` or ``"fp16"`` (FP16 weights and math, float32 input/output).
        simplify: run onnxsim (a failure is recorded as a warning, not raised).
        verify: compare ONNX Runtime with PyTorch at several shapes before writing.
        num_classes, in_channels, weights, config: how to build a named model.
        progress: called with each stage name in ``STAGES`` as it starts.

    Returns:
        An ``ExportResult``.

    Raises:
        UserInputError: bad model name, shape, opset or precision.
        ExportError: capture, rewrite, conversion or checking failed.
        VerificationError: ONNX Runtime disagreed with PyTorch; nothing is written, and
            ``exc.report`` / ``exc.result`` hold the report and the would-be ``ExportResult``.
    """
    import torch

    from segdeploy.export.rewrites import apply_rewrites

    started = time.perf_counter()
    if opset not in SUPPORTED_OPSETS:
        raise UserInputError(
            f"opset {opset} is not supported: choose {SUPPORTED_OPSETS.start} to {SUPPORTED_OPSETS.stop - 1}"
        )
    if precision not in ("fp32", "fp16"):
        raise UserInputError(f"precision {precision!r} is not supported: choose fp32 or fp16")
    check_output_path(path)  # before minutes of export work, not after
    step = progress or (lambda stage: None)
    loaded = _load(model_or_name, num_classes, in_channels, weights, config)
    shape = check_shape(tuple(input_shape), in_channels=loaded.in_channels, min_size=loaded.min_size)  # type: ignore[arg-type]
    notes: list[str] = []

    step("capture")
    example = torch.randn(*_trace_example_shape(shape, dynamic))
    captured = _capture(loaded.module, example, dynamic)
    graph_module = _unlocked_module(captured)

    step("rewrite")
    rewrites = apply_rewrites(graph_module)
    _check_rewritten(loaded.module, graph_module, example, rewrites)
    missing = [name for name in loaded.rewrites_hint if name not in rewrites]
    if missing:
        notes.append(f"the registry lists rewrites {missing} for this model but they did not match its graph")

    step("onnx")
    # unchanged graphs go to the exporter as captured: no second torch.export trace
    proto = _to_onnx(graph_module if rewrites else captured, example, dynamic, opset)

    step("simplify")
    if simplify:
        proto = _simplify(proto, notes)
    metadata = {
        "architecture": loaded.name,
        "num_classes": str(loaded.num_classes),
        "in_channels": str(loaded.in_channels),
        "trace_shape": format_shape(shape),
        "dynamic_axes": ",".join(DYNAMIC_AXES.values()) if dynamic else "",
        "min_size": str(loaded.min_size),
        "rewrites": ",".join(rewrites),
        "precision": precision,
        "opset": str(opset),
        "segdeploy_version": __version__,
    }
    fp32_nodes: list[str] = []
    if precision == "fp16":
        proto, fp32_nodes = _to_fp16(proto)
    _set_metadata(proto, metadata)

    step("check")
    _check(proto, opset)

    index_unpooling = "max_unpool" in rewrites or bool(loaded.info and loaded.info.index_unpooling)
    from segdeploy.fileio import atomic_output

    result = ExportResult(
        path=Path(path),
        opset=opset,
        ir_version=int(proto.ir_version),
        input_shape=shape,
        dynamic=dynamic,
        precision=precision,
        rewrites=rewrites,
        metadata=metadata,
        fp32_nodes=fp32_nodes,
        warnings=notes,
    )
    with atomic_output(path) as tmp:
        _save(proto, tmp)
        step("lint")
        result.lint = _lint(tmp, notes)
        if verify:
            step("verify")
            result.verification = report = _verify(tmp, loaded, shape, precision, index_unpooling)
            result.seconds = time.perf_counter() - started
            if not report.passed:
                error = VerificationError(f"ONNX Runtime disagrees with PyTorch, {path} not written: {report.worst()}")
                error.report = report  # type: ignore[attr-defined]
                error.result = result  # type: ignore[attr-defined]
                raise error
    result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- stages
def _load(model_or_name: Any, num_classes: int, in_channels: int, weights: Any, config: dict[str, Any] | None) -> Any:
    from torch import nn

    from segdeploy.models.loading import LoadedModel, load_model

    if isinstance(model_or_name, nn.Module):
        if weights is not None:
            from segdeploy.checkpoints import load_weights

            load_weights(model_or_name, weights)
        return LoadedModel(
            module=model_or_name.eval(),
            name=type(model_or_name).__name__,
            info=None,
            num_classes=num_classes,
            in_channels=in_channels,
            min_size=1,
        )
    if not isinstance(model_or_name, str):
        raise UserInputError(f"expected an nn.Module, a zoo name or file.py:factory, got {type(model_or_name).__name__}")
    loaded = load_model(model_or_name, num_classes=num_classes, in_channels=in_channels, weights=weights, **(config or {}))
    if loaded.info is None:
        loaded.name = model_or_name  # so `segdeploy verify` can rebuild a user module from the metadata
    return loaded


def _trace_example_shape(shape: Shape, dynamic: bool) -> Shape:
    """torch.export specializes dims of example size 0 or 1: trace dynamic axes at >= 2."""
    if not dynamic:
        return shape
    n, c, h, w = shape
    return (max(n, 2), c, max(h, 2), max(w, 2))


def _capture(module: nn.Module, example: torch.Tensor, dynamic: bool) -> Any:
    import torch
    from torch.export import Dim

    dynamic_shapes = ({axis: Dim.AUTO for axis in DYNAMIC_AXES},) if dynamic else None
    try:
        with torch.no_grad():
            program = torch.export.export(module, (example,), dynamic_shapes=dynamic_shapes)
    except Exception as exc:
        raise ExportError(f"torch.export could not capture the model: {_first_line(exc)}") from exc
    if dynamic:
        user_input = program.graph_signature.user_inputs[0]
        placeholder = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_input)
        dims = placeholder.meta["val"].shape
        fixed = [name for axis, name in DYNAMIC_AXES.items() if isinstance(dims[axis], int)]
        if fixed:
            raise ExportError(
                f"the model only works at its traced {', '.join(fixed)} "
                f"({format_shape(tuple(example.shape))}); export with --static or fix the model"
            )
    return program


def _unlocked_module(program: Any) -> Any:
    """The captured program as a GraphModule the rewrites can edit."""
    graph_module = program.module()
    for sub in graph_module.modules():
        sub.training = False  # ops were captured in eval mode; this only silences the exporter's warning
    return graph_module


def _check_rewritten(original: nn.Module, rewritten: Any, example: torch.Tensor, rewrites: list[str]) -> None:
    """Rewritten graph against the original model, in PyTorch, before anything is exported."""
    import torch

    if not rewrites:
        return
    with torch.no_grad():
        expected = _main_output(original(example))
        got = _main_output(rewritten(example))
    if expected.shape != got.shape:
        raise ExportError(f"rewrites {rewrites} changed the output shape {tuple(expected.shape)} -> {tuple(got.shape)}")
    scale = float(expected.abs().max()) or 1.0
    error = float((expected - got).abs().max()) / scale
    if not error <= 1e-5:  # also catches NaN
        raise ExportError(f"rewrites {rewrites} changed the model's output in PyTorch (relative error {error:.3g})")


def _main_output(output: Any) -> torch.Tensor:
    if isinstance(output, (tuple, list)):
        return output[0]
    if isinstance(output, dict):
        return next(iter(output.values()))
    return output


def _to_onnx(model: Any, example: torch.Tensor, dynamic: bool, opset: int) -> onnx.ModelProto:
    import onnx.helper

    from segdeploy.export.opset import convert_opset

    try:
        with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")  # deprecation chatter from torch internals, not the user's model
            program = _run_torch_exporter(model, example, dynamic)
    except Exception as exc:
        raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from exc
    proto = program.model_proto
    del proto.metadata_props[:]  # the exporter's own (stack traces, name scopes) live on nodes only
    for node in proto.graph.node:
        del node.metadata_props[:]
    proto = convert_opset(proto, opset)
    # the lowest IR version that can carry this opset: loadable by older runtimes and TensorRT
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    return proto


def _run_torch_exporter(model: Any, example: torch.Tensor, dynamic: bool) -> Any:
    """``torch.onnx.export(dynamo=True)`` of a GraphModule or ExportedProgram at its native opset, axes named."""
    import torch
    from torch.export import Dim

    named_axes = (dict(DYNAMIC_AXES),) if dynamic else None
    cached = _cached_exporter()
    if cached is None:
        return torch.onnx.export(
            model, (example,), dynamo=True, opset_version=_EXPORTER_OPSET, dynamic_shapes=named_axes,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False, verbose=False,
        )
    core, registry = cached
    program = core.export(
        model, (example,), registry=registry, opset_version=_EXPORTER_OPSET,
        dynamic_shapes=({axis: Dim.AUTO for axis in DYNAMIC_AXES},) if dynamic else None,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
    )
    if dynamic:
        program._rename_dynamic_axes(named_axes)
    return program


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Hide info/warning logs (e.g. "torchvision is not installed") for the duration of the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@functools.lru_cache(maxsize=1)
def _cached_exporter() -> tuple[Any, Any] | None:
    """torch's exporter and one op registry to reuse, or None to use ``torch.onnx.export``.

    ``torch.onnx.export`` rebuilds its op registry from onnxscript on every
    call (about 5 s of CPU, most of a small model's export). The function it
    wraps takes a registry; use it when this torch version has that shape,
    otherwise fall back to the public call.
    """
    try:
        from torch.onnx._internal.exporter import _core, _onnx_program, _registration

        if "registry" not in inspect.signature(_core.export).parameters:
            return None
        if not hasattr(_onnx_program.ONNXProgram, "_rename_dynamic_axes"):
            return None
        return _core, _registration.ONNXRegistry.from_torchlib(opset_version=_EXPORTER_OPSET)
    except Exception:  # internals moved: the public call still works
        return None


def _simplify(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
    except Exception as exc:  # onnxsim is an optimisation: keep the unsimplified model
        notes.append(f"onnxsim failed, kept the unsimplified model: {_first_line(exc)}")
        return proto
    if not ok:
        notes.append("onnxsim could not validate its result, kept the unsimplified model")
        return proto
    simplified.ir_version = proto.ir_version
    return simplified


def _to_fp16(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    try:
        from segdeploy.precision import convert_to_fp16
    except ImportError:
        raise ExportError("fp16 export needs segdeploy.precision.convert_to_fp16, which is not available") from None
    return convert_to_fp16(proto)


def _set_metadata(proto: onnx.ModelProto, metadata: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "segdeploy"
    proto.producer_version = __version__


def _check(proto: onnx.ModelProto, opset: int) -> None:
    import onnx.checker

    from segdeploy.export.opset import default_opset

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported model fails onnx.checker: {_first_line(exc)}") from None
    if default_opset(proto) != opset:
        raise ExportError(f"the exported model has opset {default_opset(proto)}, expected {opset}")


def _save(proto: onnx.ModelProto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path), save_as_external_data=False)


def _lint(path: Path, notes: list[str]) -> Any:
    try:
        from segdeploy.export.lint import lint_onnx
    except ImportError:
        notes.append("lint skipped: segdeploy.export.lint is not available")
        return None
    return lint_onnx(path)


def _verify(path: Path, loaded: Any, shape: Shape, precision: str, index_unpooling: bool) -> Any:
    from segdeploy.runtime import open_runner
    from segdeploy.verify import verification_shapes, verify

    # the candidate is the temporary file (suffix .tmp), so name the engine
    return verify(
        open_runner(path, engine="ort", precision=precision),
        loaded.module,
        shapes=verification_shapes(shape, loaded.min_size),
        precision=precision,
        index_unpooling=index_unpooling,
    )


def _first_line(exc: BaseException) -> str:
    if isinstance(exc, SegdeployError):
        return str(exc)
    return f"{type(exc).__name__}: {first_line(exc)}"[:400]
