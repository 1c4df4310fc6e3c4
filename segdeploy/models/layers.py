"""Building blocks shared by the model families: widths, resizing, conv-BN-ReLU, classifier heads, initialisation.

Blocks that a family spreads into its own ``nn.Sequential`` (``conv_bn_relu``)
return a list of layers, so the parameter names stay flat (``head.0.weight``,
``head.1.running_mean``) as in the reference implementations whose
checkpoints they load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.errors import UserInputError

__all__ = [
    "ConvBNReLU",
    "conv_bn_relu",
    "conv_head",
    "init_like_torchvision",
    "scaled_width",
    "scaled_widths",
    "upsample_to",
]


def scaled_width(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded, at least 8 (the backbones and the heads on them)."""
    return max(8, round(channels * width_mult))


def scaled_widths(widths: Sequence[int], width_mult: float) -> list[int]:
    """Channel counts multiplied by ``width_mult``, rounded, at least 1 each (U-Net, UNet++, U²-Net).

    Raises:
        UserInputError: ``width_mult`` is not positive.
    """
    if width_mult <= 0:
        raise UserInputError(f"width_mult must be positive, got {width_mult}")
    return [max(1, round(w * width_mult)) for w in widths]


def upsample_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``x`` to exactly ``size`` (H, W), ``align_corners=False``."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    dilation: int = 1,
    groups: int = 1,
    padding: int | None = None,
    bias: bool = False,
    batch_norm: bool = True,
) -> list[nn.Module]:
    """Conv, BatchNorm (unless ``batch_norm=False``), ReLU, as a list to spread into an ``nn.Sequential``.

    Args:
        in_channels, out_channels, kernel_size, dilation, groups: of the ``nn.Conv2d``.
        padding: default ``dilation * (kernel_size // 2)``, which keeps the size for odd kernels.
        bias: a conv bias; redundant before BatchNorm, whose shift replaces it, but part of some
            reference layouts (VGG, SegNet, U²-Net).
        batch_norm: put a BatchNorm between the conv and the ReLU.

    Returns:
        ``[Conv2d, BatchNorm2d, ReLU]`` or ``[Conv2d, ReLU]``.
    """
    if padding is None:
        padding = dilation * (kernel_size // 2)
    conv = nn.Conv2d(
        in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, groups=groups, bias=bias
    )
    norm: list[nn.Module] = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    return [conv, *norm, nn.ReLU(inplace=True)]


class ConvBNReLU(nn.Sequential):
    """Conv + BatchNorm + ReLU as one module (``0``, ``1``, ``2``); options as :func:`conv_bn_relu`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
    ) -> None:
        super().__init__(
            *conv_bn_relu(in_channels, out_channels, kernel_size, dilation=dilation, groups=groups, bias=bias)
        )


def conv_head(in_channels: int, channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """The FCN-style classifier head: 3x3 conv-BN-ReLU to ``channels``, ``Dropout2d``, 1x1 conv to the classes.

    PSPNet's main and auxiliary heads, and the GCU head, are this block.
    """
    return nn.Sequential(
        *conv_bn_relu(in_channels, channels, 3),
        nn.Dropout2d(dropout),
        nn.Conv2d(channels, num_classes, 1),
    )


def init_like_torchvision(module: nn.Module) -> None:
    """torchvision's VGG and ResNet initialisation: He (fan_out) for convs, zero conv biases, BatchNorm at identity."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
