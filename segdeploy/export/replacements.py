"""Plain-PyTorch replacements of export-hostile ops, each exact at every input size.

``segdeploy.export.rewrites`` splices these functions (traced on the captured program's own
symbolic sizes) in place of the ops they replace; each docstring states the transform and the
conditions under which it equals the original op. They use only ops whose ONNX translation
TensorRT 10's parser accepts at opset 13-20 (slices, reshapes, transposes, matrix products,
comparisons, ``Where``, ``Pad``), and they build every size-dependent constant from the input's
own sizes, so the exported graph stays right under dynamic height and width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------- index unpooling
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


# --------------------------------------------------------------------------- adaptive pooling
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


# --------------------------------------------------------------------------- patches (non-overlapping unfold/fold)
def unfold_patches(x: torch.Tensor, kernel: Sequence[int]) -> torch.Tensor:
    """``F.unfold(x, kernel, stride=kernel)`` (no padding, dilation 1) as a crop, a reshape and a permute.

    With ``kh, kw = kernel``, ``Hp = H // kh`` and ``Wp = W // kw``, PyTorch's column
    ``c*kh*kw + a*kw + b``, position ``p*Wp + q`` holds ``x[n, c, p*kh + a, q*kw + b]``: the rows
    and columns no window reaches (``H % kh``, ``W % kw``) are dropped, so the crop is exact,
    and the rest is ``[N, C, Hp, kh, Wp, kw]`` permuted to ``[N, C, kh, kw, Hp, Wp]``.
    Plain data movement: bit for bit equal. ONNX: Pad (negative amounts crop), Reshape, Transpose.
    """
    kh, kw = int(kernel[0]), int(kernel[1])
    n, c, height, width = x.shape
    hp, wp = height // kh, width // kw
    # The crop as a negative pad, a new tensor: reshaping a slice makes torch.export decide whether the
    # slice is contiguous, i.e. assume W == Wp*kw (or not) at every size.
    crop = F.pad(x, (0, wp * kw - width, 0, hp * kh - height))
    blocks = crop.reshape(n, c, hp, kh, wp, kw)
    return blocks.permute(0, 1, 3, 5, 2, 4).reshape(n, c * kh * kw, hp * wp)


def fold_patches(columns: torch.Tensor, output_size: Sequence[Any], kernel: Sequence[int]) -> torch.Tensor:
    """``F.fold(columns, output_size, kernel, stride=kernel)`` (no padding, dilation 1) as reshapes and a pad.

    The adjoint of ``unfold_patches``: windows do not overlap, so each output pixel receives at
    most one value and PyTorch's sum is that value; pixels no window reaches (the last
    ``H % kh`` rows, ``W % kw`` columns) are zero. Column ``c*kh*kw + a*kw + b``, position
    ``p*Wp + q`` goes to ``[c, p*kh + a, q*kw + b]`` with ``Hp = H // kh``, ``Wp = W // kw``
    (PyTorch requires ``L == Hp*Wp``). Bit for bit equal. ONNX: Reshape, Transpose, Pad.
    """
    kh, kw = int(kernel[0]), int(kernel[1])
    height, width = output_size[0], output_size[1]
    hp, wp = height // kh, width // kw
    n = columns.shape[0]
    channels = columns.shape[1] // (kh * kw)
    blocks = columns.reshape(n, channels, kh, kw, hp, wp).permute(0, 1, 4, 2, 5, 3)
    image = blocks.reshape(n, channels, hp * kh, wp * kw)
    return F.pad(image, (0, width - wp * kw, 0, height - hp * kh))


# --------------------------------------------------------------------------- antialiased resizing
def resize_antialias(
    x: torch.Tensor,
    output_size: Sequence[Any] | None,
    cubic: bool,
    align_corners: bool = False,
    scales: Sequence[float | None] = (None, None),
) -> torch.Tensor:
    """``F.interpolate(x, output_size, mode="bilinear"|"bicubic", antialias=True)`` as ``W_h @ x @ W_w^T``.

    PyTorch's antialiased kernel (``_upsample_bilinear2d_aa``, ``_upsample_bicubic2d_aa``; PIL's
    algorithm) is separable and linear: along each axis, output ``i`` is a normalized weighted sum
    of the inputs in a window around ``center = scale*(i + 0.5)``. ``antialias_weights`` builds
    that axis's ``[out, in]`` matrix with the kernel's own formulas from the (symbolic) sizes, and
    the width is resized first, like PyTorch does. Equal up to float32 rounding of the sums, at
    every scale: upsampling too, where the antialiased kernel is not the plain one for bicubic
    (Keys' a = -0.5 instead of -0.75, weights renormalized at the borders instead of clamped
    indices) nor for ``align_corners=True``. Equal sizes copy the input, as PyTorch does. Without
    ``output_size`` it is ``in * factor`` truncated (PyTorch's rule for ``scale_factor``), and the
    kernel reads ``1/factor`` as its scale.
    ONNX: Range, arithmetic, comparisons, Where, ReduceSum, MatMul (no antialiased Resize, which
    opset 17 lacks and TensorRT does not take).
    """
    if output_size is None:
        output_size = [_scaled_size(x.shape[-2 + i], float(scales[i])) for i in range(2)]  # type: ignore[arg-type]
    rows = antialias_weights(x.shape[-2], output_size[0], cubic, align_corners, scales[0], x.dtype, x.device)
    cols = antialias_weights(x.shape[-1], output_size[1], cubic, align_corners, scales[1], x.dtype, x.device)
    return rows @ (x @ cols.transpose(0, 1))


def antialias_weights(
    in_size: Any,
    out_size: Any,
    cubic: bool,
    align_corners: bool,
    scale: float | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """``[out_size, in_size]`` weights of PyTorch's antialiased 1-D resampling (ATen ``UpSampleKernel.cpp``).

    The axis's scale is ``(in-1)/(out-1)`` with ``align_corners`` (0 for one output), else
    ``1/scale`` when a scale factor is given, else ``in/out``; the filter's support is
    ``interp/2 * max(scale, 1)`` (``interp`` 2 for the triangle, 4 for Keys' cubic with
    a = -0.5) and its argument is scaled by ``1/max(scale, 1)``. Output ``i`` reads inputs
    ``[max(floor(center - support + 0.5), 0), min(floor(center + support + 0.5), in))`` with
    weights ``filter((j - center + 0.5) / max(scale, 1))`` divided by their sum (left as they
    are when the sum is 0). An axis whose size does not change is copied. Computed in ``dtype``,
    as the kernel does for float inputs.
    """
    one = torch.ones((), dtype=dtype, device=device)
    size_in, size_out = one * in_size, one * out_size
    if align_corners:
        step = torch.where(size_out > 1, (size_in - 1) / torch.clamp(size_out - 1, min=1), one * 0)
    elif scale is not None and scale > 0:
        step = one * (1.0 / scale)
    else:
        step = size_in / size_out
    half = 2.0 if cubic else 1.0  # interp_size / 2
    stretch = torch.clamp(step, min=1)  # the filter widens only when downsampling
    support = stretch * half
    center = step * (torch.arange(out_size, dtype=dtype, device=device) + 0.5)
    # floor equals the kernel's truncation here: the start is clamped to 0, the end is positive
    start = torch.clamp(torch.floor(center - support + 0.5), min=0).unsqueeze(1)
    end = torch.minimum(torch.floor(center + support + 0.5), size_in).unsqueeze(1)
    position = torch.arange(in_size, dtype=dtype, device=device).unsqueeze(0)
    weights = _aa_filter((position - center.unsqueeze(1) + 0.5) / stretch, cubic)
    weights = torch.where((position >= start) & (position < end), weights, one * 0)
    total = weights.sum(dim=1, keepdim=True)
    weights = torch.where(total != 0, weights / torch.where(total != 0, total, one), weights)
    if scale is not None and scale > 0:  # the kernel copies an axis whose size does not change, whatever the scale
        identity = position == torch.arange(out_size, dtype=dtype, device=device).unsqueeze(1)
        weights = torch.where(size_in == size_out, identity.to(dtype), weights)
    return weights


def _scaled_size(size: Any, factor: float) -> Any:
    """``size * factor`` truncated, as ``F.interpolate(scale_factor=...)`` sizes its output."""
    return size * int(factor) if int(factor) == factor else torch.sym_int(size * factor)


def _aa_filter(x: torch.Tensor, cubic: bool) -> torch.Tensor:
    """PIL's triangle filter, or Keys' cubic convolution with a = -0.5 (ATen's ``aa_filter``)."""
    x = x.abs()
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if not cubic:
        return torch.where(x < 1, 1 - x, zero)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, zero))
