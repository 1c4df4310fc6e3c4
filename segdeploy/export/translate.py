"""From the captured program to a checked ONNX model: translation, opset, names, simplification, metadata.

The captured (and rewritten) program is handed to torch's exporter as it is,
so torch does not trace the model again; what the exporter leaves to do is done
here: the exact opset asked for, named dynamic axes, the lowest IR version that
carries the opset, onnxsim, segdeploy's metadata and ``onnx.checker``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy._version import __version__
from segdeploy.artifact import INPUT_NAME, Metadata
from segdeploy.errors import ExportError, first_line

if TYPE_CHECKING:
    import onnx
    import torch

_EXPORTER_OPSET = 18  # the opset torch's exporter writes natively


def to_onnx(
    program: Any,
    example: torch.Tensor,
    output_name: str,
    axes: dict[int, str] | None,
    track: Sequence[str] = (),
    optimize: bool = True,
) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The ONNX model at the exporter's opset, and the ONNX value names of the program's nodes named in ``track``."""
    from segdeploy.export.capture import describe_exception

    try:
        with warnings.catch_warnings(), _quiet_loggers("torch.onnx", "onnx_ir", "onnxscript"):
            warnings.simplefilter("ignore")  # deprecation chatter from torch internals, not the user's model
            onnx_program = _run_torch_exporter(program, example, output_name, optimize)
    except Exception as exc:
        raise ExportError(f"translating the captured model to ONNX failed: {describe_exception(exc)}") from exc
    proto = onnx_program.model_proto
    del proto.metadata_props[:]  # the exporter's own (stack traces, name scopes) live on nodes only
    for node in proto.graph.node:
        del node.metadata_props[:]
    if axes:
        _name_dynamic_axes(proto, axes)
    return proto, _value_names(onnx_program, track)


def to_opset(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """Exactly ``opset`` (see ``segdeploy.export.opset``), at the lowest IR version that carries it.

    The lowest IR version keeps the file loadable by older runtimes and TensorRT.
    """
    import onnx.helper

    from segdeploy.export.opset import convert_opset

    proto = convert_opset(proto, opset)
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), ignore_unknown=True)
    return proto


def _value_names(onnx_program: Any, track: Sequence[str]) -> dict[str, str]:
    """Follow nodes of the captured program to the names the exporter gave them.

    The exporter decomposes the program first, which renames nodes (``relu_`` becomes ``relu``); each
    decomposed node remembers the nodes it came from (``meta["from_node"]``), and ONNX values are named
    after decomposed nodes.
    """
    wanted = set(track)
    found: dict[str, str] = {}
    if not wanted:
        return found
    graph = getattr(getattr(onnx_program, "exported_program", None), "graph", None)
    for node in getattr(graph, "nodes", ()):
        stack, seen = list(node.meta.get("from_node") or ()), set()
        while stack:
            source = stack.pop()
            if id(source) in seen:
                continue
            seen.add(id(source))
            if source.name in wanted:
                found[source.name] = node.name  # the last node made from it is its output
            stack.extend(getattr(source, "from_node", None) or ())
        if node.name in wanted and node.name not in found:
            found[node.name] = node.name
    return found


def _run_torch_exporter(program: Any, example: torch.Tensor, output_name: str, optimize: bool = True) -> Any:
    """Translate the captured program at the exporter's native opset (no second torch.export trace).

    Keep ``optimize``: onnxsim run on the exporter's unoptimized graph folded a batch size of 1 into a
    Resize's sizes (PSPNet failed at batch 2; measured), while the optimized graph simplifies correctly.
    """
    import torch

    cached = _cached_exporter()
    if cached is None:
        return torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            opset_version=_EXPORTER_OPSET,
            input_names=[INPUT_NAME],
            output_names=[output_name],
            external_data=False,
            verbose=False,
            optimize=optimize,
            custom_translation_table=_translations(),
        )
    core, registry = cached
    return core.export(
        program,
        (example,),
        registry=registry,
        opset_version=_EXPORTER_OPSET,
        input_names=[INPUT_NAME],
        output_names=[output_name],
        verbose=False,
        optimize=optimize,
    )


def _name_dynamic_axes(proto: onnx.ModelProto, axes: dict[int, str]) -> None:
    """Give the input's symbolic dims their names (batch, height, width) everywhere they appear."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {dims[axis].dim_param: name for axis, name in axes.items() if dims[axis].dim_param}
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


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
        from segdeploy.export.torch_compat import onnx_exporter_internals

        internals = onnx_exporter_internals()
        if internals is None:
            return None
        _core, _registration = internals
        if "registry" not in inspect.signature(_core.export).parameters:
            return None
        registry = _registration.ONNXRegistry.from_torchlib(opset_version=_EXPORTER_OPSET)
        for target, function in _translations().items():
            registry.register_op(target, function)
        return _core, registry
    except Exception:  # internals moved: the public call still works
        return None


def _translations() -> dict[Any, Any]:
    from segdeploy.export.onnx_ops import TRANSLATIONS

    return TRANSLATIONS


def simplify(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """onnxsim; where it fails, onnxscript's optimizer instead (the model is kept as it is if both fail)."""
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto)
        if not ok:
            raise ValueError("onnxsim could not validate its result")
    except Exception as exc:  # onnxsim is an optimisation: fall back, never fail the export for it
        notes.append(f"onnxsim failed ({type(exc).__name__}: {first_line(exc)}); used onnxscript's optimizer")
        return _optimize(proto, notes)
    simplified.ir_version = proto.ir_version
    return simplified


def _optimize(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    try:
        import onnxscript.optimizer

        optimized = onnxscript.optimizer.optimize(proto)
    except Exception as exc:
        notes.append(f"onnxscript's optimizer failed too, kept the model as translated: {first_line(exc)}")
        return proto
    optimized.ir_version = proto.ir_version
    return optimized


def shapes_after_cast(proto: onnx.ModelProto) -> None:
    """Shape queries of a uint8 input read the Cast's output instead: TensorRT lets a uint8 input feed only a Cast.

    The exporter reads dynamic sizes off the graph input; the Cast to float has the same shape, so
    reading it there is exact. The Cast moves to the front so the graph stays topologically sorted.
    """
    name = proto.graph.input[0].name
    cast = next((n for n in proto.graph.node if n.op_type == "Cast" and name in n.input), None)
    if cast is None:
        return
    for node in proto.graph.node:
        if node.op_type == "Shape" and node.input[0] == name:
            node.input[0] = cast.output[0]
    nodes = [n for n in proto.graph.node if n is not cast]
    del proto.graph.node[:]
    proto.graph.node.extend([cast, *nodes])


def set_metadata(proto: onnx.ModelProto, metadata: Metadata) -> None:
    del proto.metadata_props[:]
    for key, value in metadata.to_props().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "segdeploy"
    proto.producer_version = __version__


def check(proto: onnx.ModelProto, opset: int) -> None:
    import onnx.checker

    from segdeploy.export.opset import default_opset

    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"the exported model fails onnx.checker: {first_line(exc)}") from None
    if default_opset(proto) != opset:
        raise ExportError(f"the exported model has opset {default_opset(proto)}, expected {opset}")


def save(proto: onnx.ModelProto, path: Path) -> None:
    import onnx

    onnx.save_model(proto, str(path), save_as_external_data=False)
