"""GINet (Wu et al., "Graph Interaction Network for Scene Parsing", ECCV 2020).

A visual graph projected as in GloRe and a semantic graph with one node per
class (class word vectors through a two-layer MLP); each is reasoned over by a
GloRe graph convolution, then the GI unit passes messages both ways through
one node-to-node similarity: visual nodes gather semantic values (softmax
over classes), semantic nodes gather visual values (softmax over visual
nodes), each added with a learnable per-node scale (zero at start, as in the
authors' code). The visual graph is reprojected and added to the features.
The semantic-context loss scores each output class node against a learned
class centroid: training mode returns those logits as ``"sc"`` for
:func:`semantic_context_loss`.

The segmentation network: dilated ResNet (output stride 8), 3x3
conv-BN-ReLU to 512 channels, the GI unit (256 state channels, 84 visual
nodes, 300-d word vectors), a 1x1 classifier, and PSPNet's auxiliary layer3
head in training.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models._registry import register_model
from segdeploy.models.dilated import DilatedNet, aux_head
from segdeploy.models.graph import GraphConv, project_to_nodes, reproject
from segdeploy.models.layers import conv_bn_relu, scaled_width

__all__ = ["GINet", "GIUnit", "GraphTransfer", "SemanticGraph", "load_word_vectors", "semantic_context_loss"]

PAPER = "Wu et al., GINet (Graph Interaction Network), ECCV 2020"

_TEST_CONFIG = {"width_mult": 0.125, "backbone": "resnet50"}


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

    def forward(self, x: torch.Tensor, semantic: torch.Tensor, return_graph: bool = False) -> tuple[torch.Tensor, ...]:
        proj = self.proj(x).flatten(2)  # [N, K, L]
        state = self.state(x).flatten(2)  # [N, D, L]
        visual = project_to_nodes(state, proj)  # [N, D, K]
        semantic = self.semantic_gcn(semantic)
        reasoned = self.visual_gcn(visual)
        to_semantic, to_visual = self.transfer(semantic, reasoned)
        semantic_out = self.gamma_semantic * semantic + to_semantic
        visual_out = self.gamma_visual * to_visual + reasoned
        y = reproject(visual_out, proj, x)
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

    def __init__(
        self, num_classes: int, state_channels: int, hidden: int, word_vectors: torch.Tensor | None, word_dim: int
    ) -> None:
        super().__init__()
        if word_vectors is not None:
            word_dim = word_vectors.shape[1]
        self.embedding = nn.Embedding(num_classes, word_dim)
        if word_vectors is not None:
            with torch.no_grad():
                self.embedding.weight.copy_(word_vectors)
            self.embedding.weight.requires_grad_(False)
        self.mlp = nn.Sequential(
            nn.Linear(word_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, state_channels),
            nn.BatchNorm1d(state_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self) -> torch.Tensor:
        return self.mlp(self.embedding.weight)


@register_model("ginet", paper=PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG, backbone_weights=True)
class GINet(DilatedNet):
    """GINet: dilated ResNet (output stride 8), 3x3 conv-BN-ReLU to 512, GI unit between a visual graph and a
    class semantic graph, 1x1 classifier.

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

    In training mode ``"sc"`` holds the semantic-context logits ``[N,
    num_classes]``: output class node m scored against class centroid m.

    Raises:
        UserInputError: the word-vector file is missing, unreadable or of the wrong shape.
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "resnet50",
        width_mult: float = 1.0,
        num_nodes: int = 84,
        word_vectors: str | os.PathLike[str] | None = None,
        word_dim: int = 300,
        dropout: float = 0.1,
    ) -> None:
        vectors = load_word_vectors(word_vectors, num_classes) if word_vectors is not None else None
        super().__init__(in_channels=in_channels, backbone=backbone, width_mult=width_mult)
        self.aux_head = aux_head(self.backbone.channels["layer3"], num_classes, width_mult, dropout)
        channels = scaled_width(512, width_mult)
        state = scaled_width(256, width_mult)
        self.reduce = nn.Sequential(*conv_bn_relu(self.backbone.channels["layer4"], channels, 3))
        self.semantic = SemanticGraph(num_classes, state, scaled_width(128, width_mult), vectors, word_dim)
        self.gi = GIUnit(channels, state, num_nodes, num_classes)
        self.classifier = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(channels, num_classes, 1))
        self.centroids = nn.Parameter(torch.empty(num_classes, state))
        nn.init.normal_(self.centroids, std=state**-0.5)

    def decode(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
