"""GloRe (Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019) as a segmentation head.

Projection ``B`` (a 1x1 conv to N nodes) and reduced state ``X`` (1x1 conv to
C' channels) give ``V = X B^T / L``; the graph convolution
``Z = ((I - A_g) V) W_g`` is a 1D conv across nodes with a residual, ReLU, and
a 1D conv across channels; ``Y = Z B`` reprojects with the same ``B``; a 1x1
conv and BatchNorm extend it back to C channels, added to the input. The
division by ``L`` is the authors' option for inputs of varying size.

The network is the authors' FCN setting: dilated ResNet (output stride 8),
1x1 conv-BN-ReLU to 512 channels, one unit with 128 state channels and 64
nodes, a 1x1 classifier, and PSPNet's auxiliary layer3 head in training.
"""

from __future__ import annotations

import torch
from torch import nn

from segdeploy.models._registry import register_model
from segdeploy.models.dilated import DilatedNet, aux_head
from segdeploy.models.graph import GraphConv, project_to_nodes, reproject
from segdeploy.models.layers import conv_bn_relu, scaled_width

__all__ = ["GloReNet", "GloReUnit"]

PAPER = "Chen et al., GloRe (Graph-Based Global Reasoning), CVPR 2019"

_TEST_CONFIG = {"width_mult": 0.125, "backbone": "resnet50"}


class GloReUnit(nn.Module):
    """Global reasoning unit: project to ``num_nodes`` nodes, graph convolution, reproject, residual add.

    ``forward(x, return_graph=True)`` also returns the projection ``B`` ``[N,
    nodes, L]``, the node states ``V`` ``[N, C', nodes]`` and the reprojection
    ``Y`` ``[N, C', H, W]``.
    """

    def __init__(self, channels: int, state_channels: int, num_nodes: int) -> None:
        super().__init__()
        self.state = nn.Conv2d(channels, state_channels, 1)
        self.proj = nn.Conv2d(channels, num_nodes, 1)
        self.gcn = GraphConv(state_channels, num_nodes)
        self.extend = nn.Conv2d(state_channels, channels, 1, bias=False)
        # The authors' code notes this BN's scale "should be zero initialized" (the unit then starts as the
        # identity). It keeps PyTorch's default here so a freshly built model exercises the graph path.
        self.blocker = nn.BatchNorm2d(channels, eps=1e-4)

    def forward(self, x: torch.Tensor, return_graph: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        state = self.state(x).flatten(2)  # [N, C', L]
        proj = self.proj(x).flatten(2)  # [N, nodes, L]
        v = project_to_nodes(state, proj)  # [N, C', nodes]
        y = reproject(self.gcn(v), proj, x)
        out = x + self.blocker(self.extend(y))
        return (out, proj, v, y) if return_graph else out


@register_model("glore", paper=PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG, backbone_weights=True)
class GloReNet(DilatedNet):
    """GloRe: dilated ResNet (output stride 8), 1x1 conv-BN-ReLU to 512, one global reasoning unit, classifier.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet50"`` or ``"resnet101"``.
        width_mult: scales every channel width (at least 8 channels).
        num_nodes: nodes of the interaction-space graph (128 state channels at full width).
        dropout: before the classifiers (training only).
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "resnet50",
        width_mult: float = 1.0,
        num_nodes: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(in_channels=in_channels, backbone=backbone, width_mult=width_mult)
        self.aux_head = aux_head(self.backbone.channels["layer3"], num_classes, width_mult, dropout)
        channels = scaled_width(512, width_mult)
        self.reduce = nn.Sequential(*conv_bn_relu(self.backbone.channels["layer4"], channels, 1))
        self.glore = GloReUnit(channels, scaled_width(128, width_mult), num_nodes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def decode(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.classifier(self.glore(self.reduce(features))), {}
