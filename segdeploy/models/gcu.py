"""GCU (Li & Gupta, "Beyond Grids: Learning Graph Representations for Visual Recognition", NeurIPS 2018).

Soft assignment of each position to K learned anchors ``w_k`` with
per-channel scales ``sigma_k``: ``q_ik = softmax_k(-||(x_i - w_k) / sigma_k||^2 / 2)``;
node features ``z_k`` are the assignment-weighted mean of
``(x_i - w_k) / sigma_k``, L2-normalised; adjacency ``A = Z Z^T`` (cosine
similarity of nodes); graph convolution ``f(A Z W_g)`` with f = BatchNorm +
ReLU; reprojection ``X~ = Q Z~``.

The segmentation network: dilated ResNet (output stride 8), four units (2, 4,
8, 32 nodes, 512 output channels each, a quarter of the input) concatenated
with the layer4 features as PSPNet concatenates its pyramid, a 3x3 conv head,
and PSPNet's auxiliary layer3 head in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models._registry import register_model
from segdeploy.models.dilated import DilatedNet, aux_head
from segdeploy.models.layers import conv_head, scaled_width

__all__ = ["GCU", "GCUNet"]

PAPER = "Li & Gupta, GCU (Beyond Grids), NeurIPS 2018"

_TEST_CONFIG = {"width_mult": 0.125, "backbone": "resnet50"}


class GCU(nn.Module):
    """Graph convolutional unit: soft-assign positions to learned anchors, graph convolution, reproject.

    Args:
        channels: input channels d.
        out_channels: output channels of the graph convolution ``W_g``.
        num_nodes: anchors K.

    ``forward(x, return_graph=True)`` also returns the assignment ``Q`` ``[N,
    L, K]`` (rows sum to 1), node features ``Z`` ``[N, K, d]`` (unit norm) and
    adjacency ``A`` ``[N, K, K]``.
    """

    def __init__(self, channels: int, out_channels: int, num_nodes: int) -> None:
        super().__init__()
        self.anchors = nn.Parameter(torch.randn(num_nodes, channels))
        self.sigma = nn.Parameter(torch.ones(num_nodes, channels))
        self.weight = nn.Linear(channels, out_channels, bias=False)  # W_g
        self.bn = nn.BatchNorm1d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, return_graph: bool = False) -> torch.Tensor | tuple[torch.Tensor, ...]:
        n, _, h, w = x.shape
        pixels = x.flatten(2).transpose(1, 2)  # [N, L, d]
        inv_var = self.sigma.pow(-2)  # [K, d]
        # ||(x - w_k) / sigma_k||^2 expanded into matmuls: a [N, L, K, d] difference tensor would not fit.
        dist = (
            pixels.pow(2) @ inv_var.t()
            - 2 * pixels @ (self.anchors * inv_var).t()
            + (self.anchors.pow(2) * inv_var).sum(1)
        )
        q = torch.softmax(-0.5 * dist, dim=-1)  # [N, L, K]
        mass = q.sum(1).unsqueeze(-1).clamp_min(1e-6)  # [N, K, 1]
        # sum_i q_ik (x_i - w_k) / sigma_k, divided by sum_i q_ik
        z = (q.transpose(1, 2) @ pixels - mass * self.anchors) / self.sigma / mass
        z = F.normalize(z, dim=-1)  # [N, K, d]
        adjacency = z @ z.transpose(1, 2)  # [N, K, K]
        nodes = self.relu(self.bn(self.weight(adjacency @ z).transpose(1, 2)))  # [N, d_out, K]
        out = (q @ nodes.transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)
        return (out, q, z, adjacency) if return_graph else out


@register_model("gcu", paper=PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG, backbone_weights=True)
class GCUNet(DilatedNet):
    """GCU: dilated ResNet (output stride 8), graph convolutional units at several node counts concatenated with
    layer4, 3x3 conv head, 1x1 classifier.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet50"`` or ``"resnet101"``.
        width_mult: scales every channel width (at least 8 channels).
        nodes: node count of each unit.
        dropout: before the classifiers (training only).

    Raises:
        UserInputError: a node count that is not positive.
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "resnet50",
        width_mult: float = 1.0,
        nodes: Sequence[int] = (2, 4, 8, 32),
        dropout: float = 0.1,
    ) -> None:
        if not nodes or any(k < 1 for k in nodes):
            raise UserInputError(f"gcu nodes must be positive counts (got {tuple(nodes)})")
        super().__init__(in_channels=in_channels, backbone=backbone, width_mult=width_mult)
        self.aux_head = aux_head(self.backbone.channels["layer3"], num_classes, width_mult, dropout)
        features = self.backbone.channels["layer4"]
        out = features // 4
        self.gcus = nn.ModuleList(GCU(features, out, k) for k in nodes)
        self.classifier = conv_head(
            features + out * len(self.gcus), scaled_width(512, width_mult), num_classes, dropout
        )

    def decode(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.classifier(torch.cat([features] + [gcu(features) for gcu in self.gcus], dim=1)), {}
