"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017).

Dilated ResNet (output stride 8) -> pyramid pooling module -> 3x3 conv head,
upsampled to the input size. The auxiliary head on layer3 (the paper's deep
supervision, loss weight 0.4) runs only in training mode.

Upsampling uses ``align_corners=False``: the author's code (hszhao/semseg)
uses ``True`` with 8k+1 crops, mmsegmentation uses ``False``; this model takes
any size, where ``False`` is the consistent choice.

The pyramid bins use ``nn.AdaptiveAvgPool2d``, which the stock ONNX exporter
bakes to the traced size: export needs the ``adaptive_avg_pool`` rewrite.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from segdeploy.models._registry import register_model
from segdeploy.models.dilated import DilatedNet, aux_head
from segdeploy.models.layers import conv_bn_relu, conv_head, scaled_width, upsample_to

PAPER = "Zhao et al., PSPNet, CVPR 2017"


class PyramidPooling(nn.Module):
    """Average-pool to each bin size, 1x1 conv to ``C / len(bins)`` + BN + ReLU, upsample, concat with the input.

    In training, the 1x1 bin's BatchNorm sees one value per channel and sample,
    so it needs a batch of at least 2 (as in every reference implementation).
    """

    def __init__(self, in_channels: int, bins: Sequence[int] = (1, 2, 3, 6)) -> None:
        super().__init__()
        reduced = in_channels // len(bins)
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), *conv_bn_relu(in_channels, reduced, 1)) for b in self.bins
        )
        self.out_channels = in_channels + reduced * len(self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        return torch.cat([x] + [upsample_to(stage(x), size) for stage in self.stages], dim=1)


@register_model(
    "pspnet",
    paper=PAPER,
    rewrites=("adaptive_avg_pool",),
    min_size=32,
    test_config={"width_mult": 0.125, "backbone": "resnet50"},
    backbone_weights=True,
)
class PSPNet(DilatedNet):
    """PSPNet: dilated ResNet, pyramid pooling, 3x3 conv head; auxiliary layer3 head in training.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet50"`` or ``"resnet101"``.
        width_mult: scales every width (at least 8 channels).
        bins: output sizes of the pyramid's average pools.
        dropout: dropout before the classifiers (training only).

    ``forward`` returns logits ``[N, num_classes, H, W]`` in eval mode and
    ``{"out": logits, "aux": aux_logits}`` in training mode.
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "resnet50",
        width_mult: float = 1.0,
        bins: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels=in_channels, backbone=backbone, width_mult=width_mult)
        self.ppm = PyramidPooling(self.backbone.channels["layer4"], bins)
        self.head = conv_head(self.ppm.out_channels, scaled_width(512, width_mult), num_classes, dropout)
        self.aux_head = aux_head(self.backbone.channels["layer3"], num_classes, width_mult, dropout)

    def decode(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.head(self.ppm(features)), {}
