"""Graph-level rewrites of export-hostile ops into plain PyTorch ops.

The exporter captures a model once with ``torch.export`` and gets an
``ExportedProgram`` in ATen ops. Each rewrite here matches nodes of its graph
and splices in, in place, the ATen ops of a plain-PyTorch function of
``segdeploy.export.replacements`` (traced on the program's own symbolic sizes), or, for
unpooling, one custom op whose PyTorch implementation is such a function and whose ONNX
translation lives in ``segdeploy.export.onnx_ops``. The edited program is
checked against the original model in PyTorch and then translated to ONNX,
where those ops become ones TensorRT 10's ONNX parser accepts.

Working on the captured graph (not on ``nn.Module`` types, not by patching
``torch.nn.functional``) means functional calls in user code are rewritten
too, and the model's own ``forward`` stays the program PyTorch runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from segdeploy.errors import ExportError
from segdeploy.export.replacements import (
    adaptive_avg_pool2d_exact,
    adaptive_max_pool2d_exact,
    fold_patches,
    resize_antialias,
    unfold_patches,
    unpool_first_max,
    unpool_op,
)

if TYPE_CHECKING:
    from torch.export import ExportedProgram

aten = torch.ops.aten


# --------------------------------------------------------------------------- splicing into the captured program
def splice_call(graph: fx.Graph, anchor: fx.Node, fn: Callable[..., torch.Tensor], args: Sequence[Any]) -> fx.Node:
    """Insert the ATen ops of ``fn(*args)`` before ``anchor`` and return the node of its result.

    ``args`` may hold graph nodes (tensors or symbolic sizes), lists of them and constants.
    ``fn`` is traced once on the nodes' fake values, inside the captured program's own fake
    mode, so its symbolic sizes are the program's (the exported graph stays dynamic) and the
    program is never traced a second time.
    """
    from torch.fx.experimental.proxy_tensor import make_fx

    from segdeploy.export.torch_compat import detect_fake_mode

    leaves: list[fx.Node] = []

    def collect(arg: Any) -> None:
        if isinstance(arg, fx.Node):
            leaves.append(arg)
        elif isinstance(arg, (list, tuple)):
            for item in arg:
                collect(item)

    collect(list(args))

    def rebuild(arg: Any, values: Iterator[Any]) -> Any:
        if isinstance(arg, fx.Node):
            return next(values)
        if isinstance(arg, (list, tuple)):
            return type(arg)(rebuild(item, values) for item in arg)
        return arg

    def traced(*values: Any) -> torch.Tensor:
        it = iter(values)
        return fn(*(rebuild(arg, it) for arg in args))

    fake_values = [leaf.meta["val"] for leaf in leaves]
    fake_mode = detect_fake_mode(fake_values)
    # pre_dispatch keeps the op level torch.export itself captures at: aten.pad stays one op whose
    # symbolic amounts need no decomposition (and no python dispatcher, which made tracing 3x slower).
    with fake_mode or contextlib.nullcontext():
        sub = make_fx(traced, tracing_mode="real", pre_dispatch=True)(*fake_values)
    placeholders = [n for n in sub.graph.nodes if n.op == "placeholder"]
    env: dict[fx.Node, fx.Node] = dict(zip(placeholders, leaves))
    result: fx.Node | None = None
    with graph.inserting_before(anchor):
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                result = env[node.args[0]]
                continue
            env[node] = graph.node_copy(node, lambda n: env[n])
    assert result is not None
    return result


def _insert_call(graph: fx.Graph, anchor: fx.Node, target: Any, args: Sequence[Any]) -> fx.Node:
    """Insert one call of the op ``target`` before ``anchor``, with the fake value the exporter reads."""
    from segdeploy.export.torch_compat import detect_fake_mode

    with graph.inserting_before(anchor):
        node = graph.call_function(target, tuple(args))
    values = [arg.meta["val"] if isinstance(arg, fx.Node) else arg for arg in args]
    with detect_fake_mode([v for v in values if isinstance(v, torch.Tensor)]) or contextlib.nullcontext():
        node.meta = {**anchor.meta, "val": target(*values)}
    return node


# --------------------------------------------------------------------------- the rewrites
class Rewrite:
    """A named rewrite: ``match(node)`` says whether it applies, ``apply(graph, node)`` splices the replacement."""

    name: str = ""

    def match(self, node: fx.Node) -> bool:
        raise NotImplementedError

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        raise NotImplementedError


class MaxUnpool(Rewrite):
    """``max_pool2d_with_indices`` whose indices feed ``max_unpool2d`` -> ``max_pool2d`` + ``unpool_first_max``.

    Matches ``aten.max_pool2d_with_indices`` (``F.max_pool2d(return_indices=True)``,
    ``nn.MaxPool2d(return_indices=True)``) whose indices are used, only by
    ``aten.max_unpool2d`` nodes. The pooled values become a plain
    ``max_pool2d`` (ONNX ``MaxPool`` with one output) and each unpooling
    becomes ``unpool_first_max(pool_input, values, k, output_size)``, which
    exports to slices, comparisons, boolean logic, ``Where``, ``DepthToSpace``
    and ``Pad``: no MaxPool Indices, MaxUnpool, ScatterND, ArgMax or TopK.
    Each unpooling's pooling input is recorded (``RewriteResult.unpool_inputs``) so that
    verification can read the window choices a runtime made.

    Conditions: square kernel equal to the stride, no padding, dilation 1,
    ``ceil_mode=False``; anything else raises ``ExportError`` naming the config.
    """

    name = "max_unpool"

    def match(self, node: fx.Node) -> bool:
        if node.op != "call_function" or node.target is not aten.max_pool2d_with_indices.default:
            return False
        return bool(_index_users(node))

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        pool_input, kernel, stride, padding, dilation, ceil_mode = _pool_args(node)
        config = f"kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation}, ceil_mode={ceil_mode}"
        if (
            len(set(kernel)) != 1
            or list(stride) != list(kernel)
            or any(p != 0 for p in padding)
            or any(d != 1 for d in dilation)
            or ceil_mode
        ):
            raise ExportError(
                f"max_unpool rewrite: unsupported max_pool2d config ({config}); "
                "supported: square kernel equal to stride, padding 0, dilation 1, ceil_mode=False"
            )
        k = int(kernel[0])
        unpools = _index_users(node)
        for user in unpools:
            if user.op != "call_function" or user.target is not aten.max_unpool2d.default:
                raise ExportError(
                    f"max_unpool rewrite: max-pool indices are used by {user.target} ({user.name}), "
                    "not only by max_unpool2d; such indices cannot be exported for TensorRT"
                )
        for unpool in unpools:
            values, _, output_size = unpool.args[:3]
            if _same_sizes(output_size, pool_input.meta["val"].shape[-2:]):
                new = _insert_call(graph, unpool, unpool_op._opoverload, (pool_input, values, k, *output_size))
            else:  # unpooling into another plane: PyTorch's flat-index layout, spliced as ATen ops
                new = splice_call(graph, unpool, unpool_first_max, (pool_input, values, k, list(output_size), False))
            unpool.replace_all_uses_with(new)
            graph.erase_node(unpool)
            found.unpool_inputs.append((pool_input.name, k))
            found._unpool_nodes.append(new)
        pooled = _insert_call(graph, node, aten.max_pool2d.default, (pool_input, [k, k], [k, k]))
        for getter in list(node.users):
            if getter.args[1] == 0:
                getter.replace_all_uses_with(pooled)
            graph.erase_node(getter)
        graph.erase_node(node)


class AdaptiveAvgPool(Rewrite):
    """``adaptive_avg_pool2d`` -> ``adaptive_avg_pool2d_exact`` (pooling matrices from the symbolic size).

    Matches ``aten.adaptive_avg_pool2d`` and ``aten._adaptive_avg_pool2d``
    (``nn.AdaptiveAvgPool2d``, ``F.adaptive_avg_pool2d``,
    ``F.interpolate(mode="area")``). Output 1x1 becomes a mean; any other
    output size ``P_h @ x @ P_w^T`` with PyTorch's bins. Always applicable;
    the stock exporter instead writes an AveragePool fixed to the traced size.
    """

    name = "adaptive_avg_pool"
    targets = (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default)

    def match(self, node: fx.Node) -> bool:
        return node.op == "call_function" and node.target in self.targets

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        x, output_size = node.args[:2]
        new = splice_call(graph, node, adaptive_avg_pool2d_exact, (x, list(output_size)))
        node.replace_all_uses_with(new)
        graph.erase_node(node)


class AdaptiveMaxPool(Rewrite):
    """``adaptive_max_pool2d`` values -> ``adaptive_max_pool2d_exact`` (-inf masks and max).

    Matches ``aten.adaptive_max_pool2d`` (``nn.AdaptiveMaxPool2d``,
    ``F.adaptive_max_pool2d``). Only the values may be used: indices
    (``return_indices=True`` that are consumed) raise ``ExportError``.
    """

    name = "adaptive_max_pool"

    def match(self, node: fx.Node) -> bool:
        return node.op == "call_function" and node.target is aten.adaptive_max_pool2d.default

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        if _index_users(node):
            raise ExportError(
                "adaptive_max_pool rewrite: the model uses the indices of adaptive_max_pool2d; "
                "only its values can be exported exactly"
            )
        x, output_size = node.args[:2]
        new = splice_call(graph, node, adaptive_max_pool2d_exact, (x, list(output_size)))
        for getter in list(node.users):
            if getter.args[1] == 0:
                getter.replace_all_uses_with(new)
            graph.erase_node(getter)
        graph.erase_node(node)


class PatchUnfold(Rewrite):
    """Non-overlapping ``im2col`` -> ``unfold_patches`` (crop, reshape, permute).

    Matches ``aten.im2col`` (``F.unfold``, ``nn.Unfold``) with stride equal to the kernel,
    padding 0 and dilation 1: the patch extraction of MobileViTV2 and of ViT-style patch
    embeddings written with ``unfold``. Other configurations are left to the translation.
    """

    name = "unfold_patches"

    def match(self, node: fx.Node) -> bool:
        if node.op != "call_function" or node.target is not aten.im2col.default:
            return False
        _, kernel, dilation, padding, stride = node.args[:5]
        return _non_overlapping(kernel, dilation, padding, stride)

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        new = splice_call(graph, node, unfold_patches, (node.args[0], list(node.args[1])))
        node.replace_all_uses_with(new)
        graph.erase_node(node)


class PatchFold(Rewrite):
    """Non-overlapping ``col2im`` -> ``fold_patches`` (reshape, permute, zero pad).

    Matches ``aten.col2im`` (``F.fold``, ``nn.Fold``) with stride equal to the kernel,
    padding 0 and dilation 1 (MobileViTV2's folding). The stock translation is ``Col2Im``,
    which opset 17 and TensorRT's parser lack. Other configurations are left to the translation.
    """

    name = "fold_patches"

    def match(self, node: fx.Node) -> bool:
        if node.op != "call_function" or node.target is not aten.col2im.default:
            return False
        _, _, kernel, dilation, padding, stride = node.args[:6]
        return _non_overlapping(kernel, dilation, padding, stride)

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        columns, output_size, kernel = node.args[:3]
        new = splice_call(graph, node, fold_patches, (columns, list(output_size), list(kernel)))
        node.replace_all_uses_with(new)
        graph.erase_node(node)


class AntialiasResize(Rewrite):
    """Antialiased bilinear/bicubic ``interpolate`` -> ``resize_antialias`` (``W_h @ x @ W_w^T``).

    Matches ``aten._upsample_bilinear2d_aa`` and ``aten._upsample_bicubic2d_aa`` (``.vec`` with
    an output size, and the overload with per-axis scales): ``F.interpolate(..., antialias=True)``,
    which timm uses to resample position embeddings to the input's patch grid. The stock
    translation is a ``Resize`` with ``antialias=1``, which opset 17 lacks and TensorRT does not
    take. Always applicable.
    """

    name = "antialias_resize"
    cubic = {
        aten._upsample_bilinear2d_aa.vec: False,
        aten._upsample_bilinear2d_aa.default: False,
        aten._upsample_bicubic2d_aa.vec: True,
        aten._upsample_bicubic2d_aa.default: True,
    }

    def match(self, node: fx.Node) -> bool:
        return node.op == "call_function" and node.target in self.cubic

    def apply(self, graph: fx.Graph, node: fx.Node, found: RewriteResult) -> None:
        x, output_size, align_corners = node.args[:3]
        if node.target in (aten._upsample_bilinear2d_aa.vec, aten._upsample_bicubic2d_aa.vec):
            factors = node.args[3] if len(node.args) > 3 else node.kwargs.get("scale_factors")
            # .vec takes an output size or scale factors (then the size follows from them)
            scales = [None, None] if output_size is not None else [float(f) for f in factors]
        else:
            rest = [*node.args[3:5], None, None]
            scales = [node.kwargs.get("scales_h", rest[0]), node.kwargs.get("scales_w", rest[1])]
        size = list(output_size) if output_size is not None else None
        args = (x, size, self.cubic[node.target], bool(align_corners), scales)
        new = splice_call(graph, node, resize_antialias, args)
        node.replace_all_uses_with(new)
        graph.erase_node(node)


REWRITES: tuple[Rewrite, ...] = (
    MaxUnpool(),
    AdaptiveAvgPool(),
    AdaptiveMaxPool(),
    PatchUnfold(),
    PatchFold(),
    AntialiasResize(),
)
"""Every rewrite, in the order they are tried."""

REWRITE_NAMES: tuple[str, ...] = tuple(r.name for r in REWRITES)


@dataclass
class RewriteResult:
    """What ``apply_rewrites`` changed: rewrite names, and each index unpooling's pooling input in graph order."""

    applied: list[str] = field(default_factory=list)
    unpool_inputs: list[tuple[str, int]] = field(default_factory=list)
    _unpool_nodes: list[fx.Node] = field(default_factory=list, repr=False)


def apply_rewrites(program: ExportedProgram) -> RewriteResult:
    """Apply every matching rewrite to the captured ``program`` in place.

    The program is edited, not re-traced: its graph keeps the symbolic sizes of
    the capture, so what is exported next is exactly what was captured, plus
    the replacements.

    Args:
        program: from ``torch.export.export``.

    Returns:
        A ``RewriteResult``; ``applied`` lists the rewrites that changed the graph, in ``REWRITES`` order.

    Raises:
        ExportError: a matched op has a configuration no rewrite can export exactly.
    """
    graph = program.graph_module.graph
    found = RewriteResult()
    for rewrite in REWRITES:
        for node in list(graph.nodes):
            if node.graph is graph and rewrite.match(node):
                rewrite.apply(graph, node, found)
                if rewrite.name not in found.applied:
                    found.applied.append(rewrite.name)
    if found.applied:
        graph.eliminate_dead_code()
        graph.lint()
        program.graph_module.recompile()
    # in the order the model runs its unpoolings (graph order), which verification relies on
    order = {node: i for i, node in enumerate(graph.nodes)}
    ranks = [order[node] for node in found._unpool_nodes]
    found.unpool_inputs = [entry for _, entry in sorted(zip(ranks, found.unpool_inputs))]
    return found


# --------------------------------------------------------------------------- helpers
def _index_users(node: fx.Node) -> list[fx.Node]:
    """Users of output 1 (the indices) of a node returning ``(values, indices)``."""
    return [user for getter in node.users if getter.args[1] == 1 for user in getter.users]


def _pool_args(node: fx.Node) -> tuple[fx.Node, list[int], list[int], list[int], list[int], bool]:
    """``max_pool2d_with_indices`` arguments with ATen's defaults filled in, as pairs."""
    args = list(node.args) + [None] * 6
    x, kernel, stride, padding, dilation, ceil_mode = args[:6]
    kwargs = node.kwargs

    def pair(value: Any, default: list[int]) -> list[int]:
        if value is None or value == []:
            return default
        value = [value] if isinstance(value, int) else list(value)
        return value * 2 if len(value) == 1 else value

    kernel = pair(kernel, [])
    stride = pair(kwargs.get("stride", stride), kernel)
    padding = pair(kwargs.get("padding", padding), [0, 0])
    dilation = pair(kwargs.get("dilation", dilation), [1, 1])
    ceil_mode = bool(kwargs.get("ceil_mode", ceil_mode) or False)
    return x, kernel, stride, padding, dilation, ceil_mode


def _non_overlapping(
    kernel: Sequence[int], dilation: Sequence[int], padding: Sequence[int], stride: Sequence[int]
) -> bool:
    """``im2col``/``col2im`` windows that tile the plane: stride equal to the kernel, no padding, dilation 1."""
    return list(stride) == list(kernel) and all(p == 0 for p in padding) and all(d == 1 for d in dilation)


def _same_sizes(output_size: Sequence[Any], input_size: Sequence[Any]) -> bool:
    """Whether unpooling's ``output_size`` is, symbolically, the pooling input's height and width."""
    return all(_size_expr(a) == _size_expr(b) for a, b in zip(output_size, input_size))


def _size_expr(size: Any) -> Any:
    if hasattr(size, "meta"):  # an fx.Node such as sym_size
        size = size.meta.get("val", size)
    if isinstance(size, torch.SymInt):
        return size.node.expr
    return int(size) if isinstance(size, int) else size
