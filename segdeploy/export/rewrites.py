"""Graph-level rewrites of export-hostile ops into plain PyTorch ops.

The exporter captures a model once with ``torch.export`` and gets an
``ExportedProgram`` in ATen ops. Each rewrite here matches nodes of its graph
and splices in, in place, the ATen ops of a plain-PyTorch function of this
module (traced on the program's own symbolic sizes), or, for unpooling, one
custom op whose PyTorch implementation is such a function and whose ONNX
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
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import fx

from segdeploy.errors import ExportError

if TYPE_CHECKING:
    from torch.export import ExportedProgram

aten = torch.ops.aten


# --------------------------------------------------------------------------- plain-PyTorch replacements
def unpool_first_max(
    pool_input: torch.Tensor,
    values: torch.Tensor,
    kernel: int,
    output_size: Sequence[Any],
    same_plane: bool = True,
) -> torch.Tensor:
    """``max_unpool2d(values, indices_of(max_pool2d(pool_input, kernel, kernel)), output_size)`` without indices.

    Each ``kernel x kernel`` window of ``pool_input`` is read as ``kernel**2``
    slots. The slot PyTorch's indices point at is recomputed: the first slot
    equal to the window maximum, or, when the window holds NaN, its last NaN
    (PyTorch's CPU and CUDA kernels update on ``val > max or isnan(val)``).
    ``values`` are placed through that one-hot with ``where`` (so inf/NaN in
    ``values`` stay where PyTorch puts them), the slots are reassembled with
    ``pixel_shuffle`` and the result is padded with zeros to ``output_size``.

    Args:
        pool_input: the tensor the indices were computed on, ``[N, C, H, W]``.
        values: the tensor to unpool, ``[N, C, H // kernel, W // kernel]``.
        kernel: window side, equal to the stride.
        output_size: ``(H_out, W_out)`` of the unpooled result.
        same_plane: ``output_size`` is the pooling input's size; otherwise the
            result is laid out through the flat index like PyTorch does.

    Returns:
        ``[N, C, H_out, W_out]``, equal to PyTorch's result bit for bit.
    """
    height, width = pool_input.shape[-2], pool_input.shape[-1]
    pooled_h, pooled_w = values.shape[-2], values.shape[-1]
    # The end bound drops the last row/column of odd sizes (no window reaches them)
    # inside each strided slice: a separate crop would copy the whole input in ORT.
    slots = [
        pool_input[..., a : pooled_h * kernel : kernel, b : pooled_w * kernel : kernel]
        for a in range(kernel)
        for b in range(kernel)
    ]
    # The max comes from the slots themselves, not from a max_pool2d: a runtime may
    # compute MaxPool at another precision than the slices (ONNX Runtime's CPU FP16
    # graph runs MaxPool in FP32 on the unrounded input), and then no slot equals it.
    window_max = slots[0]
    for slot in slots[1:]:
        window_max = torch.maximum(window_max, slot)
    chosen = first_max_slots(slots, window_max)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    # One Where on the stacked masks ([N, C, k*k, h, w]) against values broadcast over
    # the slot axis: in ONNX Runtime this is cheaper than k*k Wheres and a Concat of floats.
    placed = torch.where(torch.stack(chosen, dim=2), values.unsqueeze(2), zero)
    windows = F.pixel_shuffle(placed.flatten(1, 2), kernel)  # [N, C, pooled_h*k, pooled_w*k]
    out_h, out_w = output_size[0], output_size[1]
    if same_plane:
        # Pad by out - windows.shape so the exported output size is exactly output_size.
        return F.pad(windows, (0, out_w - windows.shape[-1], 0, out_h - windows.shape[-2]))
    # PyTorch writes values at flat index h*W + w of an H_out x W_out plane:
    # lay out the pooling input's plane, then re-cut it at the output width.
    plane = F.pad(windows, (0, width - windows.shape[-1], 0, height - windows.shape[-2])).flatten(2)
    length = out_h * out_w
    filler = plane.new_zeros(plane.shape[0], plane.shape[1], length)
    flat = torch.cat([plane, filler], dim=2)[..., :length]
    return flat.reshape(plane.shape[0], plane.shape[1], out_h, out_w)


@torch.library.custom_op("segdeploy::unpool_first_max", mutates_args=())
def unpool_op(pool_input: torch.Tensor, values: torch.Tensor, kernel: int, out_h: int, out_w: int) -> torch.Tensor:
    """``unpool_first_max`` to the pooling input's own size, as one op of the captured program.

    The exporter translates it straight to ONNX (``segdeploy.export.onnx_ops``); spliced as
    ~60 ATen ops on symbolic sizes instead, each unpooling cost SegNet's export about 2 s of
    decomposition and type promotion (measured).
    """
    return unpool_first_max(pool_input, values, kernel, (out_h, out_w))


@unpool_op.register_fake
def _unpool_op_shape(
    pool_input: torch.Tensor, values: torch.Tensor, kernel: int, out_h: int, out_w: int
) -> torch.Tensor:
    return values.new_empty((values.shape[0], values.shape[1], out_h, out_w))


class BoolOps(NamedTuple):
    """The five elementwise ops the window choice needs, so PyTorch and ONNX share one algorithm."""

    isnan: Callable[[Any], Any]
    equal: Callable[[Any, Any], Any]
    and_: Callable[[Any, Any], Any]
    or_: Callable[[Any, Any], Any]
    not_: Callable[[Any], Any]


TORCH_OPS = BoolOps(torch.isnan, torch.eq, torch.logical_and, torch.logical_or, torch.logical_not)


def first_max_slots(slots: Sequence[Any], window_max: Any, ops: BoolOps = TORCH_OPS) -> list[Any]:
    """One boolean mask per slot, true where that slot holds PyTorch's max-pool index."""
    # Boolean logic only: ONNX Runtime has no Where for bool, TensorRT's
    # ArgMax/TopK tie-breaking is undocumented, and this needs no int64 math.
    # Last NaN first, scanning backwards; the NaNs seen by the end say whether the
    # window holds one, and then start the forward scan for the first maximum as
    # already "seen", so no maximum is chosen even if a runtime's Max dropped the NaN.
    nans = [ops.isnan(slot) for slot in slots]
    at_nan = list(nans)
    later_nan = nans[-1]
    for i in range(len(slots) - 2, -1, -1):
        at_nan[i] = ops.and_(nans[i], ops.not_(later_nan))
        later_nan = ops.or_(later_nan, nans[i])
    chosen = []
    seen = later_nan
    for i, slot in enumerate(slots):
        at_max = ops.equal(slot, window_max)
        chosen.append(ops.or_(ops.and_(at_max, ops.not_(seen)), at_nan[i]))
        if i < len(slots) - 1:
            seen = ops.or_(seen, at_max)
    return chosen


def adaptive_avg_pool2d_exact(x: torch.Tensor, output_size: Sequence[Any]) -> torch.Tensor:
    """``adaptive_avg_pool2d`` as two matrix products, exact at every input size.

    Bin ``i`` of ``o`` over a side of length ``n`` covers
    ``[floor(i*n/o), ceil((i+1)*n/o))`` (PyTorch's rule); ``P[i, j]`` is
    ``1/len(bin i)`` inside the bin and 0 outside, so ``out = P_h @ x @ P_w^T``.
    The matrices are built from the (symbolic) input size, so the exported
    graph stays right under dynamic height and width.
    """
    out_h, out_w = output_size[0], output_size[1]
    if isinstance(out_h, int) and isinstance(out_w, int) and out_h == 1 and out_w == 1:
        return x.mean(dim=(-2, -1), keepdim=True)
    rows = _bin_mask(x.shape[-2], out_h, x.device)
    cols = _bin_mask(x.shape[-1], out_w, x.device)
    pool_h = rows.to(x.dtype) / rows.sum(dim=1, keepdim=True).to(x.dtype)
    pool_w = cols.to(x.dtype) / cols.sum(dim=1, keepdim=True).to(x.dtype)
    return pool_h @ x @ pool_w.transpose(0, 1)


def adaptive_max_pool2d_exact(x: torch.Tensor, output_size: Sequence[Any]) -> torch.Tensor:
    """``adaptive_max_pool2d`` values with masks, exact at every input size.

    Same bins as ``adaptive_avg_pool2d_exact``: positions outside a bin are
    filled with ``-inf`` and the maximum is taken, first over width, then
    over height (max is exact in any order; NaN propagates as in PyTorch).
    """
    out_h, out_w = output_size[0], output_size[1]
    if isinstance(out_h, int) and isinstance(out_w, int) and out_h == 1 and out_w == 1:
        return x.amax(dim=(-2, -1), keepdim=True)
    over_width = _masked_max_last_dim(x, _bin_mask(x.shape[-1], out_w, x.device))  # [N, C, H, out_w]
    over_height = _masked_max_last_dim(over_width.transpose(-1, -2), _bin_mask(x.shape[-2], out_h, x.device))
    return over_height.transpose(-1, -2)


def _bin_mask(size: Any, bins: Any, device: torch.device) -> torch.Tensor:
    """Boolean ``[bins, size]``: row ``i`` is true on PyTorch's adaptive-pooling bin ``i``."""
    index = torch.arange(bins, device=device)
    start = (index * size) // bins
    end = ((index + 1) * size + bins - 1) // bins
    position = torch.arange(size, device=device)
    return (position.unsqueeze(0) >= start.unsqueeze(1)) & (position.unsqueeze(0) < end.unsqueeze(1))


def _masked_max_last_dim(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[..., L]`` and mask ``[o, L]`` -> ``[..., o]``: max over the masked positions."""
    fill = torch.full((), float("-inf"), dtype=x.dtype, device=x.device)
    return torch.where(mask, x.unsqueeze(-2), fill).amax(dim=-1)


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


REWRITES: tuple[Rewrite, ...] = (MaxUnpool(), AdaptiveAvgPool(), AdaptiveMaxPool())
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


def _same_sizes(output_size: Sequence[Any], input_size: Sequence[Any]) -> bool:
    """Whether unpooling's ``output_size`` is, symbolically, the pooling input's height and width."""
    return all(_size_expr(a) == _size_expr(b) for a, b in zip(output_size, input_size))


def _size_expr(size: Any) -> Any:
    if hasattr(size, "meta"):  # an fx.Node such as sym_size
        size = size.meta.get("val", size)
    if isinstance(size, torch.SymInt):
        return size.node.expr
    return int(size) if isinstance(size, int) else size
