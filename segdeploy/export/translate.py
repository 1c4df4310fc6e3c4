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
import re
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
    """Give the input's symbolic dims their names (batch, height, width) everywhere they appear, and the
    outputs' dims computed from them a name a reader understands (``height``, ``height/4``; see ``readable_dim``)."""
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    renames = {dims[axis].dim_param: name for axis, name in axes.items() if dims[axis].dim_param}
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]
    for value in proto.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param and dim.dim_param not in renames.values():
                dim.dim_param = readable_dim(dim.dim_param, renames)


_DIM_MULTIPLES = (1, 2, 4, 8, 16, 32, 64, 128)
_DIM_EXPRESSION = re.compile(r"^(?:[\s\d()+\-*/,]|s\d+|Max|Min|floor|ceiling|Mod)+$")


def readable_dim(expression: str, renames: dict[str, str]) -> str:
    """An output dim written by torch (``32*((s53//32))``) in the input's axis names.

    A dim that equals a fixed fraction of one input side at all its multiples of some ``m`` (the sizes a
    model accepts are such multiples) is named by it: ``height``, ``height/4``, ``2*width``. Anything
    else keeps its expression, with the names put in (``floor(height/16)*floor(width/16) + 1``).
    """
    import sympy

    if not _DIM_EXPRESSION.match(expression):
        return expression  # not torch's symbolic arithmetic: leave it as it is
    symbols = {name: sympy.Symbol(name, integer=True, positive=True) for name in renames}
    try:
        expr = sympy.sympify(expression, locals=symbols)
    except (sympy.SympifyError, SyntaxError, TypeError):
        return expression
    free = [s for s in expr.free_symbols if s.name in renames]
    if len(free) != len(expr.free_symbols) or not free:
        return expression
    if len(free) == 1:
        (side,) = free
        k = sympy.Symbol("k", integer=True, positive=True)
        for m in _DIM_MULTIPLES:
            ratio = sympy.simplify(expr.subs(side, m * k) / (m * k))
            if ratio.is_Rational and ratio > 0:
                return _scaled(renames[side.name], ratio)
    named = expr.subs({s: sympy.Symbol(renames[s.name]) for s in free})
    return str(named)


def _scaled(name: str, ratio: Any) -> str:
    """``height``, ``height/4``, ``2*height``, ``3*height/4``."""
    p, q = int(ratio.p), int(ratio.q)
    text = name if p == 1 else f"{p}*{name}"
    return text if q == 1 else f"{text}/{q}"


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


# onnxsim passes that fuse standard ops into ONNX Runtime contrib ops (com.microsoft::Attention,
# GroupQueryAttention): TensorRT's parser cannot import them, and a segdeploy file is standard ONNX.
_CONTRIB_FUSIONS = ("fuse_attention", "fuse_gqa")
STANDARD_DOMAINS = frozenset({"", "ai.onnx"})


def simplify(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """onnxsim; where it fails, onnxscript's optimizer instead (the model is kept as it is if both fail).

    Neither may leave an op outside the standard ONNX domains that the translated model did not
    have (ONNX Runtime contrib fusions such as ``com.microsoft::Attention``, FusedConv,
    SkipLayerNormalization, BiasGelu): such a result is dropped for the unsimplified model.
    """
    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(proto, **_onnxsim_options(onnxsim))
        if not ok:
            raise ValueError("onnxsim could not validate its result")
    except Exception as exc:  # onnxsim is an optimisation: fall back, never fail the export for it
        notes.append(f"onnxsim failed ({type(exc).__name__}: {first_line(exc)}); used onnxscript's optimizer")
        return _standard_only(proto, _optimize(proto, notes), "onnxscript's optimizer", notes)
    simplified.ir_version = proto.ir_version
    return _standard_only(proto, simplified, "onnxsim", notes)


def nonstandard_ops(proto: onnx.ModelProto) -> list[str]:
    """``domain::op`` of every node outside the standard ONNX domains, sorted and unique."""
    return sorted({f"{n.domain}::{n.op_type}" for n in proto.graph.node if n.domain not in STANDARD_DOMAINS})


def _onnxsim_options(onnxsim: Any) -> dict[str, Any]:
    """Skip onnxsim's contrib-op fusions where this onnxsim has them (older releases have neither)."""
    try:
        if "skipped_optimizers" in inspect.signature(onnxsim.simplify).parameters:
            return {"skipped_optimizers": list(_CONTRIB_FUSIONS)}
    except (TypeError, ValueError):
        pass
    return {}


def _standard_only(before: onnx.ModelProto, after: onnx.ModelProto, tool: str, notes: list[str]) -> onnx.ModelProto:
    added = sorted(set(nonstandard_ops(after)) - set(nonstandard_ops(before)))
    if not added:
        return after
    notes.append(f"{tool} fused ops into {', '.join(added)} (not standard ONNX): kept the model unsimplified")
    return before


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


def fix_spatial_dims(proto: onnx.ModelProto, size: tuple[int, int], input_format: Any) -> None:
    """Fix the input's height and width (and the dims named after them) at ``size``; the batch stays as it is.

    For a file whose size rule was narrowed to its traced size: ONNX Runtime and TensorRT then refuse
    any other size at the input instead of failing inside the graph.
    """
    from segdeploy.artifact import dynamic_axes

    names = {name: axis for axis, name in dynamic_axes(input_format).items()}
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    values = {"height": int(size[0]), "width": int(size[1])}
    renamed = {dims[names[n]].dim_param: v for n, v in values.items() if dims[names[n]].dim_param}
    renamed.update(values)
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renamed:
                dim.dim_value = renamed[dim.dim_param]
    for name, axis in names.items():
        if name in values:
            dims[axis].dim_value = values[name]


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
