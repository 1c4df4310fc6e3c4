"""SegNet (Badrinarayanan, Kendall, Cipolla, TPAMI 2017).

Encoder: the 13 convs of VGG16-BN (torchvision's ``vgg16_bn`` weights load
into ``backbone``), each stage closed by a 2x2 max pool that also returns the
position of each maximum. Decoder: the mirror image, 13 convs with BatchNorm
and ReLU, each stage opened by unpooling with the indices of the matching
encoder pool; the last conv maps to the classes without BatchNorm or ReLU.

Unpooling is told the size of the map before pooling (``output_size``), so
inputs that are not multiples of 32 (CamVid's 360x480, 97x131) come back at
their own size; the row or column a floor-mode pool dropped stays zero.

The forward pass is plain PyTorch (``max_pool2d(return_indices=True)`` and
``max_unpool2d``); the export rewrite ``max_unpool`` turns it into ops that
TensorRT parses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.models._registry import register_model
from segdeploy.models.backbones.vgg import VGG
from segdeploy.models.layers import conv_bn_relu

__all__ = ["SegNet", "pool_with_indices", "unpool"]

_POOL = 2  # SegNet's pools and unpools are 2x2, stride 2


@register_model(
    "segnet",
    paper="Badrinarayanan et al., SegNet, TPAMI 2017",
    rewrites=("max_unpool",),
    min_size=32,
    test_config={"width_mult": 0.125},
    index_unpooling=True,
)
class SegNet(nn.Module):
    """SegNet with a VGG16-BN encoder and a mirrored decoder; 29.4M parameters with 12 classes (CamVid).

    Args:
        num_classes: output channels.
        in_channels: input image channels.
        width_mult: scales every conv width (at least 8); 1.0 is the paper's network.

    ``forward(x)`` gives logits ``[N, num_classes, H, W]``.
    """

    def __init__(self, *, num_classes: int = 21, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()
        self.backbone = VGG(batch_norm=True, in_channels=in_channels, width_mult=width_mult)
        features = self.backbone.features
        conv_counts = [_count_convs(features[start:end]) for start, end in self.backbone.stage_layer_ranges]
        # Decoder stage for encoder stage s: its convs keep the stage width, the last one narrows
        # to the width of stage s - 1 (or to the classes after stage 1). Deepest stage first.
        stages = []
        for stage in reversed(range(5)):
            width = self.backbone.stage_channels[stage]
            final = self.backbone.stage_channels[stage - 1] if stage > 0 else num_classes
            widths = [width] * (conv_counts[stage] - 1) + [final]
            stages.append(_decoder_stage(width, widths, last_is_classifier=stage == 0))
        self.decoder = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone.features
        pooled: list[tuple[torch.Tensor, torch.Size]] = []
        for start, end in self.backbone.stage_layer_ranges:
            for index in range(start, end):
                x = features[index](x)
            size = x.shape
            x, indices = pool_with_indices(x)
            pooled.append((indices, size))
        for stage, (indices, size) in zip(self.decoder, reversed(pooled)):
            x = stage(unpool(x, indices, size))
        return x


def pool_with_indices(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SegNet's 2x2 stride-2 max pool, with the flat ``H*W`` position of each window's first maximum."""
    return F.max_pool2d(x, _POOL, _POOL, return_indices=True)


def unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Put each value of ``x`` back where ``indices`` says, zeros elsewhere, in a map of ``size``'s H and W.

    ``size`` is the shape before pooling: without it an odd side would come back one short.
    """
    return F.max_unpool2d(x, indices, _POOL, _POOL, output_size=size[-2:])


def _count_convs(layers: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in layers.modules())


def _decoder_stage(in_channels: int, widths: list[int], *, last_is_classifier: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for position, width in enumerate(widths):
        if last_is_classifier and position == len(widths) - 1:
            layers.append(nn.Conv2d(in_channels, width, 3, padding=1))  # class scores: no BatchNorm, no ReLU
        else:
            layers += conv_bn_relu(in_channels, width, 3, bias=True)
        in_channels = width
    return nn.Sequential(*layers)
