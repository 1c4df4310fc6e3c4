"""Graph-reasoning heads on the dilated ResNet (output stride 8): GloRe, GCU and GINet.

Each head projects the layer4 feature map (``L = H * W`` positions) onto a
small graph of nodes, reasons over the nodes, and projects the result back to
the positions, so context travels between distant regions in one step.

- ``glore``: Chen et al., "Graph-Based Global Reasoning Networks", CVPR 2019.
  Projection ``B`` (a 1x1 conv to N nodes) and reduced state ``X`` (1x1 conv
  to C' channels) give ``V = X B^T / L``; the graph convolution
  ``Z = ((I - A_g) V) W_g`` is a 1D conv across nodes with a residual, ReLU, and
  a 1D conv across channels; ``Y = Z B`` reprojects with the same ``B``; a 1x1
  conv and BatchNorm extend it back to C channels, added to the input. The
  division by ``L`` is the authors' option for inputs of varying size.
- ``gcu``: Li & Gupta, "Beyond Grids: Learning Graph Representations for
  Visual Recognition", NeurIPS 2018. Soft assignment of each position to K
  learned anchors ``w_k`` with per-channel scales ``sigma_k``:
  ``q_ik = softmax_k(-||(x_i - w_k) / sigma_k||^2 / 2)``; node features
  ``z_k`` are the assignment-weighted mean of ``(x_i - w_k) / sigma_k``,
  L2-normalised; adjacency ``A = Z Z^T`` (cosine similarity of nodes); graph
  convolution ``f(A Z W_g)`` with f = BatchNorm + ReLU; reprojection
  ``X~ = Q Z~``. Four units (2, 4, 8, 32 nodes) are concatenated with the
  input features, as PSPNet concatenates its pyramid.
- ``ginet``: Wu et al., "Graph Interaction Network for Scene Parsing",
  ECCV 2020. A visual graph projected as in GloRe and a semantic graph with one
  node per class (class word vectors through a two-layer MLP); each is reasoned
  over by a GloRe graph convolution, then the GI unit passes messages both
  ways through one node-to-node similarity: visual nodes gather semantic
  values (softmax over classes), semantic nodes gather visual values (softmax
  over visual nodes), each added with a learnable per-node scale (zero at
  start, as in the authors' code). The visual graph is reprojected and added
  to the features. The semantic-context loss scores each output class node
  against a learned class centroid: training mode returns those logits as
  ``"sc"`` for :func:`semantic_context_loss`.

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

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models._registry import register_model
from segdeploy.models.backbones.resnet import ResNet, load_backbone_weights
from segdeploy.models.backbones.vgg import scaled_width
from segdeploy.models.pspnet import conv_bn_relu, upsample_to

GLORE_PAPER = "Chen et al., GloRe (Graph-Based Global Reasoning), CVPR 2019"
GCU_PAPER = "Li & Gupta, GCU (Beyond Grids), NeurIPS 2018"
GINET_PAPER = "Wu et al., GINet (Graph Interaction Network), ECCV 2020"

_TEST_CONFIG = {"width_mult": 0.125, "backbone": "resnet50"}


def aux_head(in_channels: int, num_classes: int, width_mult: float, dropout: float) -> nn.Sequential:
    """PSPNet's deep-supervision head on layer3: 3x3 conv 256 + BN + ReLU, dropout, 1x1 classifier."""
    aux = scaled_width(256, width_mult)
    return nn.Sequential(*conv_bn_relu(in_channels, aux, 3), nn.Dropout2d(dropout), nn.Conv2d(aux, num_classes, 1))


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
        n, _, h, w = x.shape
        state = self.state(x).flatten(2)  # [N, C', L]
        proj = self.proj(x).flatten(2)  # [N, nodes, L]
        # Dividing by L keeps V's scale independent of the input size.
        v = torch.bmm(state, proj.transpose(1, 2)) / state.shape[-1]  # [N, C', nodes]
        y = torch.bmm(self.gcn(v), proj).reshape(n, -1, h, w)
        out = x + self.blocker(self.extend(y))
        return (out, proj, v, y) if return_graph else out


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


class GraphTransfer(nn.Module):
    """GINet's graph interaction: messages between semantic ``[N, D, M]`` and visual ``[N, D, K]`` nodes.

    One similarity ``E = query(S)^T key(V)`` ``[N, M, K]``; visual node k
    receives ``sum_m softmax_m(E)_mk value_s(S)_m`` (semantic-to-visual),
    semantic node m receives ``sum_k softmax_k(E)_mk value_v(V)_k``
    (visual-to-semantic).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv1d(channels, channels // 2, 1)
        self.key = nn.Conv1d(channels, channels // 2, 1)
        self.value_visual = nn.Conv1d(channels, channels, 1)
        self.value_semantic = nn.Conv1d(channels, channels, 1)

    def forward(self, semantic: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        energy = torch.bmm(self.query(semantic).transpose(1, 2), self.key(visual))  # [N, M, K]
        to_semantic = torch.bmm(self.value_visual(visual), torch.softmax(energy, dim=-1).transpose(1, 2))
        to_visual = torch.bmm(self.value_semantic(semantic), torch.softmax(energy, dim=1))
        return to_semantic, to_visual  # [N, D, M], [N, D, K]


class GIUnit(nn.Module):
    """GINet's graph interaction unit on features ``[N, C, H, W]`` and semantic nodes ``[N, D, M]``.

    Returns the enhanced features and the output semantic nodes; with
    ``return_graph=True`` also the projection ``[N, K, L]`` and the visual
    nodes before and after the interaction ``[N, D, K]``.
    """

    def __init__(self, channels: int, state_channels: int, num_nodes: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(channels, num_nodes, 1)
        self.state = nn.Conv2d(channels, state_channels, 1)
        self.visual_gcn = GraphConv(state_channels, num_nodes)
        self.semantic_gcn = GraphConv(state_channels, num_classes)
        self.transfer = GraphTransfer(state_channels)
        self.gamma_visual = nn.Parameter(torch.zeros(num_nodes))
        self.gamma_semantic = nn.Parameter(torch.zeros(num_classes))
        self.extend = nn.Conv2d(state_channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(
        self, x: torch.Tensor, semantic: torch.Tensor, return_graph: bool = False
    ) -> tuple[torch.Tensor, ...]:
        n, _, h, w = x.shape
        proj = self.proj(x).flatten(2)  # [N, K, L]
        state = self.state(x).flatten(2)  # [N, D, L]
        visual = torch.bmm(state, proj.transpose(1, 2)) / state.shape[-1]  # [N, D, K]
        semantic = self.semantic_gcn(semantic)
        reasoned = self.visual_gcn(visual)
        to_semantic, to_visual = self.transfer(semantic, reasoned)
        semantic_out = self.gamma_semantic * semantic + to_semantic
        visual_out = self.gamma_visual * to_visual + reasoned
        y = torch.bmm(visual_out, proj).reshape(n, -1, h, w)
        out = x + self.bn(self.extend(y))
        if return_graph:
            return out, semantic_out, proj, visual, visual_out
        return out, semantic_out


def load_word_vectors(path: str | os.PathLike[str], num_classes: int) -> torch.Tensor:
    """Class word vectors from a ``.npy`` float array ``[num_classes, D]`` (no pickles).

    Raises:
        UserInputError: missing or unreadable file, or not a finite float array of that shape.
    """
    import numpy as np

    try:
        array = np.load(os.fspath(path), allow_pickle=False)
    except FileNotFoundError:
        raise UserInputError(f"word-vector file {os.fspath(path)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserInputError(f"cannot read word vectors from {os.fspath(path)!r}: {reason}") from None
    if not isinstance(array, np.ndarray):
        raise UserInputError(f"{os.fspath(path)!r} holds several arrays; expected one .npy array ({num_classes}, D)")
    if array.ndim != 2 or array.shape[0] != num_classes:
        raise UserInputError(
            f"word vectors in {os.fspath(path)!r} have shape {array.shape}; expected ({num_classes}, D),"
            " one row per class"
        )
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise UserInputError(f"word vectors in {os.fspath(path)!r} must be finite floats (got {array.dtype})")
    return torch.from_numpy(array.astype(np.float32))


class SemanticGraph(nn.Module):
    """One node per class: word vectors ``[M, E]`` -> Linear/BN/ReLU (128) -> Linear/BN/ReLU (D) -> ``[M, D]``.

    The vectors are a learned table by default; vectors from a file are frozen,
    as the authors keep their GloVe vectors fixed.
    """

    def __init__(self, num_classes: int, state_channels: int, hidden: int, word_vectors: torch.Tensor | None,
                 word_dim: int) -> None:
        super().__init__()
        if word_vectors is not None:
            word_dim = word_vectors.shape[1]
        self.embedding = nn.Embedding(num_classes, word_dim)
        if word_vectors is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(word_vectors)
            self.embedding.weight.requires_grad_(False)
        self.mlp = nn.Sequential(
            nn.Linear(word_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, state_channels), nn.BatchNorm1d(state_channels), nn.ReLU(inplace=True),
        )

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding.weight)


class GraphHeadNet(nn.Module):
    """Dilated ResNet (output stride 8) + a graph head + PSPNet's auxiliary layer3 head in training mode.

    ``forward`` returns logits ``[N, num_classes, H, W]`` in eval mode and a dict
    with ``"out"`` and ``"aux"`` (and GINet's ``"sc"``) in training mode.
    """

    def __init__(self, *, in_channels: int, num_classes: int, backbone: str, width_mult: float,
                 dropout: float) -> None:
        super().__init__()
        self.backbone = ResNet(backbone, in_channels=in_channels, width_mult=width_mult, output_stride=8)
        self.aux_head = aux_head(self.backbone.channels["layer3"], num_classes, width_mult, dropout)

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        logits, extra = self.head(features["layer4"])
        logits = upsample_to(logits, size)
        if not self.training:
            return logits
        return {"out": logits, "aux": upsample_to(self.aux_head(features["layer3"]), size), **extra}


class GloReNet(GraphHeadNet):
    """FCN + one GloRe unit: 1x1 conv-BN-ReLU to 512, GloRe (128 state channels, 64 nodes), 1x1 classifier."""

    def __init__(self, *, num_classes: int, in_channels: int, backbone: str, width_mult: float, num_nodes: int,
                 dropout: float) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, backbone=backbone,
                         width_mult=width_mult, dropout=dropout)
        channels = scaled_width(512, width_mult)
        self.reduce = nn.Sequential(*conv_bn_relu(self.backbone.channels["layer4"], channels, 1))
        self.glore = GloReUnit(channels, scaled_width(128, width_mult), num_nodes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.classifier(self.glore(self.reduce(features))), {}


class GCUNet(GraphHeadNet):
    """Dilated ResNet + GCUs at several node counts concatenated with layer4, 3x3 conv head, 1x1 classifier."""

    def __init__(self, *, num_classes: int, in_channels: int, backbone: str, width_mult: float,
                 nodes: Sequence[int], dropout: float) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, backbone=backbone,
                         width_mult=width_mult, dropout=dropout)
        features = self.backbone.channels["layer4"]
        out = features // 4
        self.gcus = nn.ModuleList(GCU(features, out, k) for k in nodes)
        head = scaled_width(512, width_mult)
        self.classifier = nn.Sequential(
            *conv_bn_relu(features + out * len(self.gcus), head, 3),
            nn.Dropout2d(dropout),
            nn.Conv2d(head, num_classes, 1),
        )

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.classifier(torch.cat([features] + [gcu(features) for gcu in self.gcus], dim=1)), {}


class GINet(GraphHeadNet):
    """Dilated ResNet + 3x3 conv-BN-ReLU to 512 + GI unit with the class semantic graph + 1x1 classifier.

    In training mode ``"sc"`` holds the semantic-context logits ``[N,
    num_classes]``: output class node m scored against class centroid m.
    """

    def __init__(self, *, num_classes: int, in_channels: int, backbone: str, width_mult: float, num_nodes: int,
                 word_vectors: torch.Tensor | None, word_dim: int, dropout: float) -> None:
        super().__init__(in_channels=in_channels, num_classes=num_classes, backbone=backbone,
                         width_mult=width_mult, dropout=dropout)
        channels = scaled_width(512, width_mult)
        state = scaled_width(256, width_mult)
        self.reduce = nn.Sequential(*conv_bn_relu(self.backbone.channels["layer4"], channels, 3))
        self.semantic = SemanticGraph(num_classes, state, scaled_width(128, width_mult), word_vectors, word_dim)
        self.gi = GIUnit(channels, state, num_nodes, num_classes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))
        self.centroids = nn.Parameter(torch.empty(num_classes, state))
        nn.init.normal_(self.centroids, std=state**-0.5)

    def head(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = self.reduce(features)
        semantic = self.semantic().t().unsqueeze(0).expand(x.shape[0], -1, -1)  # [N, D, M]
        x, semantic_out = self.gi(x, semantic)
        logits = self.classifier(x)
        if not self.training:
            return logits, {}
        return logits, {"sc": (semantic_out * self.centroids.t()).sum(1)}


def semantic_context_loss(sc_logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255) -> torch.Tensor:
    """GINet's SC-loss: binary cross-entropy of each class's score against whether it appears in the label map.

    Args:
        sc_logits: ``[N, num_classes]``, the ``"sc"`` output of ``ginet`` in training mode.
        target: integer label maps ``[N, H, W]``; ``ignore_index`` pixels count for no class.
        ignore_index: label of unlabelled pixels.

    Returns:
        The mean loss over samples and classes.
    """
    num_classes = sc_logits.shape[1]
    valid = target != ignore_index
    labels = torch.where(valid, target, torch.zeros_like(target)).flatten(1)
    counts = torch.zeros(target.shape[0], num_classes, device=target.device)
    counts.scatter_add_(1, labels, valid.flatten(1).to(counts.dtype))
    return F.binary_cross_entropy_with_logits(sc_logits, (counts > 0).to(sc_logits.dtype))


def _finish(model: nn.Module, backbone_weights: str | None) -> nn.Module:
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    return model


@register_model("glore", paper=GLORE_PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG)
def glore(
    *,
    num_classes: int = 21,
    in_channels: int = 3,
    backbone: str = "resnet50",
    width_mult: float = 1.0,
    num_nodes: int = 64,
    dropout: float = 0.1,
    backbone_weights: str | None = None,
) -> nn.Module:
    """GloRe: dilated ResNet-50 (output stride 8), 1x1 conv to 512, one global reasoning unit, classifier.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet50"`` or ``"resnet101"``.
        width_mult: scales every channel width (at least 8 channels).
        num_nodes: nodes of the interaction-space graph.
        dropout: before the classifiers (training only).
        backbone_weights: optional torchvision ImageNet ResNet checkpoint.

    Returns:
        The model.
    """
    model = GloReNet(num_classes=num_classes, in_channels=in_channels, backbone=backbone, width_mult=width_mult,
                     num_nodes=num_nodes, dropout=dropout)
    return _finish(model, backbone_weights)


@register_model("gcu", paper=GCU_PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG)
def gcu(
    *,
    num_classes: int = 21,
    in_channels: int = 3,
    backbone: str = "resnet50",
    width_mult: float = 1.0,
    nodes: Sequence[int] = (2, 4, 8, 32),
    dropout: float = 0.1,
    backbone_weights: str | None = None,
) -> nn.Module:
    """GCU: dilated ResNet-50 (output stride 8), graph convolutional units at 2/4/8/32 nodes, 3x3 head.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet50"`` or ``"resnet101"``.
        width_mult: scales every channel width (at least 8 channels).
        nodes: node count of each unit.
        dropout: before the classifiers (training only).
        backbone_weights: optional torchvision ImageNet ResNet checkpoint.

    Returns:
        The model.
    """
    if not nodes or any(k < 1 for k in nodes):
        raise UserInputError(f"gcu nodes must be positive counts (got {tuple(nodes)})")
    model = GCUNet(num_classes=num_classes, in_channels=in_channels, backbone=backbone, width_mult=width_mult,
                   nodes=tuple(nodes), dropout=dropout)
    return _finish(model, backbone_weights)


@register_model("ginet", paper=GINET_PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG)
def ginet(
    *,
    num_classes: int = 21,
    in_channels: int = 3,
    backbone: str = "resnet50",
    width_mult: float = 1.0,
    num_nodes: int = 84,
    word_vectors: str | os.PathLike[str] | None = None,
    word_dim: int = 300,
    dropout: float = 0.1,
    backbone_weights: str | None = None,
) -> nn.Module:
    """GINet: dilated ResNet-50 (output stride 8), GI unit between a visual graph and a class semantic graph.

    Args:
        num_classes: output channels of the logits and nodes of the semantic graph.
        in_channels: input image channels.
        backbone: ``"resnet50"`` or ``"resnet101"``.
        width_mult: scales every channel width (at least 8 channels).
        num_nodes: nodes of the visual graph.
        word_vectors: optional local ``.npy`` float array ``[num_classes, D]`` of class word vectors
            (e.g. GloVe), kept frozen; default: a learned table.
        word_dim: length of the learned word vectors (ignored with ``word_vectors``).
        dropout: before the classifiers (training only).
        backbone_weights: optional torchvision ImageNet ResNet checkpoint.

    Returns:
        The model.

    Raises:
        UserInputError: the word-vector file is missing, unreadable or of the wrong shape.
    """
    vectors = load_word_vectors(word_vectors, num_classes) if word_vectors is not None else None
    model = GINet(num_classes=num_classes, in_channels=in_channels, backbone=backbone, width_mult=width_mult,
                  num_nodes=num_nodes, word_vectors=vectors, word_dim=word_dim, dropout=dropout)
    return _finish(model, backbone_weights)
