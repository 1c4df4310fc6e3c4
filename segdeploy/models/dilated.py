"""The frame PSPNet and the graph-reasoning heads share: dilated ResNet, a head on layer4, an auxiliary head on layer3.

The auxiliary head is PSPNet's deep supervision (loss weight 0.4 in the
paper): a 3x3 conv-BN-ReLU to 256 channels, dropout and a 1x1 classifier on
layer3, run only in training mode. GloRe, GCU and GINet keep it, as their
authors' segmentation code does.
"""

from __future__ import annotations

import torch
from torch import nn

from segdeploy.models.backbones.resnet import ResNet
from segdeploy.models.layers import conv_head, scaled_width, upsample_to

__all__ = ["DilatedNet", "aux_head"]


def aux_head(in_channels: int, num_classes: int, width_mult: float, dropout: float) -> nn.Sequential:
    """PSPNet's deep-supervision head on layer3: 3x3 conv 256 + BN + ReLU, dropout, 1x1 classifier."""
    return conv_head(in_channels, scaled_width(256, width_mult), num_classes, dropout)


class DilatedNet(nn.Module):
    """Dilated ResNet-50/101 (output stride 8) with a head on layer4 and an auxiliary head on layer3.

    Subclasses build their head, set ``aux_head`` (with :func:`aux_head`) where their reference model
    builds it (the construction order decides which initial weights each layer draws under a seed),
    and implement :meth:`decode`.

    ``forward`` returns logits ``[N, num_classes, H, W]`` in eval mode and a dict with ``"out"`` and
    ``"aux"`` (and whatever extra outputs ``decode`` gives) in training mode.
    """

    aux_head: nn.Module

    def __init__(self, *, in_channels: int, backbone: str, width_mult: float) -> None:
        super().__init__()
        self.backbone = ResNet(backbone, in_channels=in_channels, width_mult=width_mult, output_stride=8)

    def decode(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits at layer4's resolution from the layer4 map, and extra training outputs (may be empty)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        logits, extra = self.decode(features["layer4"])
        logits = upsample_to(logits, size)
        if not self.training:
            return logits
        return {"out": logits, "aux": upsample_to(self.aux_head(features["layer3"]), size), **extra}
