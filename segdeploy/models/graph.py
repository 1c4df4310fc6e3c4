"""Graph reasoning over a feature map: the pieces the GloRe and GINet heads share.

The graph heads (:mod:`~segdeploy.models.glore`, :mod:`~segdeploy.models.gcu`,
:mod:`~segdeploy.models.ginet`) sit on the dilated ResNet of
:class:`~segdeploy.models.dilated.DilatedNet` (output stride 8). Each projects
the layer4 feature map (``L = H * W`` positions) onto a small graph of nodes,
reasons over the nodes, and projects the result back to the positions, so
context travels between distant regions in one step.

GloRe and GINet project alike: a 1x1 conv ``B`` gives each node's weight at
every position and a 1x1 conv gives the reduced state ``X``; the nodes are
``V = X B^T / L`` (:func:`project_to_nodes`; dividing by ``L`` is the GloRe
authors' option for inputs of varying size) and reasoned node states ``Z``
go back as ``Y = Z B`` (:func:`reproject`). Both reason with GloRe's graph
convolution (:class:`GraphConv`).

Head widths follow the authors' segmentation code where the papers leave them
open: GloRe 512 head channels, 128 state channels, 64 nodes; GINet 512 head
channels, 256 state channels, 84 visual nodes, 300-d word vectors. The GCU
outputs are 512 channels each (a quarter of the input, PSPNet's ratio). All
three have PSPNet's auxiliary layer3 head in training mode. ``width_mult``
scales channel widths; node counts and word-vector length are graph sizes and
stay fixed.

Full-size parameter counts, 21 classes (``segdeploy models "*" --json`` or
``sum(p.numel() for p in create_model(name).parameters())`` under
``torch.device("meta")``):

============  ===========  ============
model          resnet50     resnet101
============  ===========  ============
glore          27,119,210   46,111,338
gcu            49,146,218   68,138,346
ginet          36,048,885   55,041,013
============  ===========  ============
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GraphConv", "project_to_nodes", "reproject"]


class GraphConv(nn.Module):
    """GloRe's graph convolution on node states ``[N, C', nodes]``: ``W_g(ReLU((I - A_g) V))``.

    ``A_g`` is a 1D conv across nodes (the sign is absorbed in its learned
    weights, so ``I - A_g`` is the conv plus the identity); ``W_g`` a 1D conv
    across channels.
    """

    def __init__(self, state_channels: int, num_nodes: int) -> None:
        super().__init__()
        self.node_conv = nn.Conv1d(num_nodes, num_nodes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.channel_conv = nn.Conv1d(state_channels, state_channels, 1, bias=False)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = self.node_conv(v.transpose(1, 2)).transpose(1, 2) + v
        return self.channel_conv(self.relu(h))


def project_to_nodes(state: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """Node states ``V = X B^T / L`` ``[N, C', nodes]`` from the state ``[N, C', L]`` and projection ``[N, nodes, L]``.

    Dividing by ``L`` keeps V's scale independent of the input size.
    """
    return torch.bmm(state, proj.transpose(1, 2)) / state.shape[-1]


def reproject(nodes: torch.Tensor, proj: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``Y = Z B``: node states ``[N, C', nodes]`` back to the positions of ``like`` ``[N, C, H, W]``.

    Returns:
        The map ``[N, C', H, W]``.
    """
    n, _, h, w = like.shape
    return torch.bmm(nodes, proj).reshape(n, -1, h, w)
