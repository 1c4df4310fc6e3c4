"""ResNet-50/101 (bottleneck, v1.5) under torchvision's parameter names, dilated for dense prediction.

The module tree is torchvision's ``resnet50()`` / ``resnet101()`` without
``avgpool`` and ``fc``: ``conv1``, ``bn1``, ``layer1``..``layer4``, each block
``conv1/bn1/conv2/bn2/conv3/bn3`` plus ``downsample.0/1`` in a layer's first
block. A torchvision ImageNet checkpoint loads with :func:`load_backbone_weights`
(its ``fc.*`` tensors are ignored).

``output_stride`` 16 or 8 follows torchvision's ``replace_stride_with_dilation``:
the stride-2 of layer4 (and layer3 for 8) is removed and later 3x3 convs are
dilated by the stride they lost; the first block of a dilated layer keeps the
previous dilation. ``multi_grid`` (DeepLabv3, section 3.2) instead gives the
blocks of layer4 the rates ``unit_rate * layer4_dilation``, e.g. (1, 2, 4) at
output stride 16 -> (2, 4, 8).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models.backbones._loading import find_backbone, load_checked
from segdeploy.models.layers import init_like_torchvision, scaled_width

__all__ = ["RESNET_DEPTHS", "Bottleneck", "ResNet", "load_backbone_weights"]

# Bottleneck blocks per layer.
RESNET_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}
EXPANSION = 4  # a bottleneck's output has 4x its inner width
# Which of layer2, layer3, layer4 trade their stride for dilation, per output stride.
_DILATE = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}


class Bottleneck(nn.Module):
    """torchvision's Bottleneck: 1x1 reduce, 3x3 (stride, dilation), 1x1 expand, residual add."""

    def __init__(
        self,
        in_channels: int,
        width: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet-50/101 feature extractor.

    Args:
        arch: ``"resnet50"`` or ``"resnet101"``.
        in_channels: input channels of ``conv1``.
        width_mult: scales every width (at least 8 channels); 1.0 is the published network.
        output_stride: 32 (classification ResNet), 16 or 8 (dilated).
        multi_grid: unit rates of layer4's blocks (one per block), or None for
            torchvision's dilation pattern.

    ``forward(x)`` returns a dict with ``layer1`` .. ``layer4`` (strides 4, 8,
    16, 32 before dilation); ``channels`` maps the same keys to channel counts.
    """

    def __init__(
        self,
        arch: str = "resnet50",
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if arch not in RESNET_DEPTHS:
            raise UserInputError(f"unknown ResNet {arch!r}; choose one of: {', '.join(RESNET_DEPTHS)}")
        if output_stride not in _DILATE:
            raise UserInputError(f"ResNet output_stride must be 8, 16 or 32 (got {output_stride})")
        if width_mult <= 0:
            raise UserInputError(f"width_mult must be positive (got {width_mult})")
        blocks = RESNET_DEPTHS[arch]
        if multi_grid is not None and len(multi_grid) != blocks[3]:
            raise UserInputError(f"multi_grid needs one rate per layer4 block ({blocks[3]}), got {tuple(multi_grid)}")
        self.arch = arch
        self.output_stride = output_stride
        stem = scaled_width(64, width_mult)
        self.conv1 = nn.Conv2d(in_channels, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._in_channels = stem
        self._dilation = 1
        dilate = _DILATE[output_stride]
        widths = [scaled_width(w, width_mult) for w in (64, 128, 256, 512)]
        self.layer1 = self._make_layer(widths[0], blocks[0])
        self.layer2 = self._make_layer(widths[1], blocks[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(widths[2], blocks[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(widths[3], blocks[3], stride=2, dilate=dilate[2], multi_grid=multi_grid)
        self.channels = {f"layer{i + 1}": w * EXPANSION for i, w in enumerate(widths)}
        init_like_torchvision(self)

    def _make_layer(
        self,
        width: int,
        blocks: int,
        *,
        stride: int = 1,
        dilate: bool = False,
        multi_grid: Sequence[int] | None = None,
    ) -> nn.Sequential:
        previous_dilation = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        if multi_grid is None:
            rates = [previous_dilation] + [self._dilation] * (blocks - 1)
        else:
            rates = [self._dilation * unit for unit in multi_grid]
        out_channels = width * EXPANSION
        downsample = None
        if stride != 1 or self._in_channels != out_channels:
            downsample = nn.Sequential(
                nn.Conv2d(self._in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        layers = [Bottleneck(self._in_channels, width, stride=stride, dilation=rates[0], downsample=downsample)]
        layers += [Bottleneck(out_channels, width, dilation=rate) for rate in rates[1:]]
        self._in_channels = out_channels
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs of layer1 (stride 4, the low-level features) to layer4."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
            features[name] = x
        return features


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a torchvision-format ImageNet ResNet checkpoint into a ResNet backbone.

    Args:
        model: a :class:`ResNet`, or a model holding one as ``model.backbone``
            (``pspnet``, ``deeplabv2``, ``deeplabv3``, ``deeplabv3plus``).
        path: e.g. torchvision's ``resnet101-63fe2227.pth``, loaded with
            ``weights_only=True``; its ``fc.*`` tensors are ignored.

    Returns:
        The names, in ``model.state_dict()``, of the tensors that were loaded.

    Raises:
        UserInputError: the model has no ResNet backbone.
        CheckpointError: unreadable file, or its tensors do not fit the backbone
            (depth, ``in_channels``, ``width_mult``).
    """
    from segdeploy.checkpoints import load_checkpoint

    backbone = find_backbone(model, ResNet)
    state = {k: v for k, v in load_checkpoint(path).items() if not k.startswith("fc.")}
    return load_checked(model, backbone, state, path, backbone.arch)
