"""The DeepLab family: v1 (LargeFOV + MSc), v2 (ASPP of class scores), v3 (ASPP + image pooling), v3+ (decoder).

- v1: Chen et al., "Semantic Image Segmentation with Deep Convolutional Nets and Fully Connected CRFs", ICLR 2015.
- v2: Chen et al., "DeepLab: Semantic Image Segmentation with Deep Convolutional Nets, Atrous Convolution,
  and Fully Connected CRFs", TPAMI 2017.
- v3: Chen et al., "Rethinking Atrous Convolution for Semantic Image Segmentation", arXiv:1706.05587, 2017.
- v3+: Chen et al., "Encoder-Decoder with Atrous Separable Convolution for Semantic Image Segmentation", ECCV 2018.

The CRF post-processing of v1/v2 and multi-scale inputs at inference are not part of the network and are left out.

As in the papers: v1's fc6 is LargeFOV's (3x3, dilation 12, 1024 channels)
and its MSc MLPs are 128 wide; v2's ASPP branches are plain atrous convs to
class scores (no BN/ReLU on logits), summed; v3's ASPP concatenates its five
branches and projects them with a 1x1 conv; v3's backbone is one ResNet with
multi-grid in layer4, the paper's ASPP variant (not its cascade of layer4
copies); v3+ is v3 with separable ASPP branches and a decoder. Every upsample
goes to the input's exact size with ``F.interpolate(align_corners=False)``.

Image pooling uses ``x.mean((2, 3), keepdim=True)``: exact at every input
size, so no model here needs an export rewrite.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models._registry import register_model
from segdeploy.models.backbones.resnet import ResNet
from segdeploy.models.backbones.vgg import VGG
from segdeploy.models.layers import ConvBNReLU, scaled_width, upsample_to

V1_PAPER = "Chen et al., DeepLab v1 (LargeFOV, MSc), ICLR 2015"
V2_PAPER = "Chen et al., DeepLab v2 (ASPP), TPAMI 2017"
V3_PAPER = "Chen et al., DeepLab v3, arXiv:1706.05587 2017"
V3PLUS_PAPER = "Chen et al., DeepLab v3+, ECCV 2018"

_TEST_CONFIG = {"width_mult": 0.125, "backbone": "resnet50"}


class SeparableConvBNReLU(nn.Sequential):
    """Depthwise 3x3 (atrous) conv + BN + ReLU, then pointwise 1x1 conv + BN + ReLU (DeepLabv3+, section 3.2)."""

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1) -> None:
        super().__init__(
            OrderedDict(
                depthwise=ConvBNReLU(in_channels, in_channels, 3, dilation=dilation, groups=in_channels),
                pointwise=ConvBNReLU(in_channels, out_channels, 1),
            )
        )


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average -> 1x1 conv -> BN -> ReLU, spread over the feature map.

    Spreading (``expand``) is bilinear upsampling of a 1x1 map, exactly. In
    training, BN and ReLU run after the spreading: the BN then sees ``N * H * W``
    values per channel with the same batch mean and variance as the ``N``
    pooled ones, so a batch of 1 trains instead of raising. Both orders are the
    same function in eval mode, where BN comes first so exporters fold it into the conv.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean((2, 3), keepdim=True))
        size = (-1, -1, x.shape[2], x.shape[3])
        if self.training:
            return self.relu(self.bn(pooled.expand(size)))
        return self.relu(self.bn(pooled)).expand(size)


class ASPP(nn.Module):
    """DeepLabv3 ASPP: 1x1 conv, 3x3 atrous convs at ``rates``, image pooling; concatenated, 1x1 projection.

    Args:
        in_channels: backbone channels.
        out_channels: channels of every branch and of the projection (256 in the paper).
        rates: atrous rates of the 3x3 branches ((6, 12, 18) at output stride 16).
        separable: depthwise-separable 3x3 branches (DeepLabv3+).
        dropout: after the projection, training only.
    """

    def __init__(
        self, in_channels: int, out_channels: int, rates: Sequence[int], *, separable: bool, dropout: float
    ) -> None:
        super().__init__()
        atrous: list[nn.Module] = [
            SeparableConvBNReLU(in_channels, out_channels, dilation=r)
            if separable
            else ConvBNReLU(in_channels, out_channels, 3, dilation=r)
            for r in rates
        ]
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels, 1), *atrous, ImagePooling(in_channels, out_channels)]
        )
        self.project = nn.Sequential(
            ConvBNReLU(len(self.branches) * out_channels, out_channels, 1),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


def _aspp_rates(output_stride: int) -> tuple[int, ...]:
    # The paper's rates are for output stride 16; at 8 the same field of view needs them doubled.
    if output_stride not in (8, 16):
        raise UserInputError(f"DeepLabv3 output_stride must be 8 or 16 (got {output_stride})")
    return tuple(r * 16 // output_stride for r in (6, 12, 18))


@register_model(
    "deeplabv1", paper=V1_PAPER, rewrites=(), min_size=32, test_config={"width_mult": 0.125}, backbone_weights=True
)
class DeepLabV1(nn.Module):
    """DeepLab-MSc-LargeFOV on VGG16 (output stride 8).

    The main path is pool5 -> fc6 (3x3, dilation 12, 1024 ch) -> fc7 (1x1) -> fc8
    (class scores). With ``multi_scale`` the input and pool1..pool4 each feed a
    two-layer MLP (3x3 conv 128 with the stride that brings it to 1/8, 1x1 conv
    128) and its own 1x1 classifier; all scores are summed. That equals the
    paper's concatenation of the 5 x 128 MLP features to fc7 before one linear
    classifier, written as the reference Caffe model does.

    pool1..pool3 are the backbone's 2x2 pools in ceil mode; the Caffe model
    uses 3x3 stride-2 pools, which give the same sizes.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        width_mult: scales every width (at least 8 channels).
        multi_scale: add the MSc classifiers on the input and pool1..pool4 (False: plain LargeFOV).
        dropout: after fc6, fc7 and the MSc MLP layers (training only).

    A torchvision ``vgg16`` ImageNet checkpoint loads into the backbone (``backbone_weights``).
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        width_mult: float = 1.0,
        multi_scale: bool = True,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        # ceil_mode makes pool1..3 give ceil(H/2^k), the size a stride-2^k 3x3 conv gives: the scores align.
        self.backbone = VGG(
            batch_norm=False, in_channels=in_channels, width_mult=width_mult, output_stride=8, ceil_mode=True
        )
        fc = scaled_width(1024, width_mult)
        self.fc6 = nn.Conv2d(self.backbone.out_channels, fc, 3, padding=12, dilation=12)
        self.fc7 = nn.Conv2d(fc, fc, 1)
        self.fc8 = nn.Conv2d(fc, num_classes, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.multi_scale = nn.ModuleList()
        if multi_scale:
            mlp = scaled_width(128, width_mult)
            sources = [in_channels, *self.backbone.stage_channels[:4]]
            strides = (8, 4, 2, 1, 1)  # input, pool1, pool2, pool3, pool4 -> 1/8
            for channels, stride in zip(sources, strides):
                self.multi_scale.append(
                    nn.Sequential(
                        nn.Conv2d(channels, mlp, 3, stride=stride, padding=1),
                        nn.ReLU(inplace=True),
                        nn.Dropout(dropout),
                        nn.Conv2d(mlp, mlp, 1),
                        nn.ReLU(inplace=True),
                        nn.Dropout(dropout),
                        nn.Conv2d(mlp, num_classes, 1),
                    )
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        stages = self.backbone.forward_stages(x)
        h = self.dropout(self.relu(self.fc6(stages[4])))
        h = self.dropout(self.relu(self.fc7(h)))
        scores = self.fc8(h)
        for branch, source in zip(self.multi_scale, [x, *stages[:4]]):
            scores = scores + branch(source)
        return upsample_to(scores, size)


@register_model("deeplabv2", paper=V2_PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG, backbone_weights=True)
class DeepLabV2(nn.Module):
    """DeepLab v2 (ASPP-L): dilated ResNet (output stride 8), four 3x3 atrous convs to class scores, summed.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet101"`` or ``"resnet50"``.
        width_mult: scales every backbone width (at least 8 channels).
        rates: atrous rates of the ASPP branches.
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "resnet101",
        width_mult: float = 1.0,
        rates: Sequence[int] = (6, 12, 18, 24),
    ) -> None:
        super().__init__()
        self.backbone = ResNet(backbone, in_channels=in_channels, width_mult=width_mult, output_stride=8)
        features = self.backbone.channels["layer4"]
        self.aspp = nn.ModuleList(nn.Conv2d(features, num_classes, 3, padding=r, dilation=r) for r in rates)
        for conv in self.aspp:
            # The reference Caffe model initialises the score layers with N(0, 0.01).
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.backbone(x)["layer4"]
        scores = self.aspp[0](features)
        for branch in self.aspp[1:]:
            scores = scores + branch(features)
        return upsample_to(scores, size)


@register_model("deeplabv3", paper=V3_PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG, backbone_weights=True)
class DeepLabV3(nn.Module):
    """DeepLab v3: ResNet with multi-grid, ASPP (1x1, 3x3 at 6/12/18, image pooling) concatenated and projected.

    :class:`DeepLabV3Plus` adds the v3+ decoder (``with_decoder``): separable ASPP branches, and a
    decoder fusing layer1 (stride 4) features: layer1 -> 1x1 conv 48 + BN + ReLU; ASPP output
    upsampled to that size; concatenated; two separable 3x3 convs (256); then the 1x1 classifier.
    Either way the logits are upsampled to the input size.

    Args:
        num_classes: output channels of the logits.
        in_channels: input image channels.
        backbone: ``"resnet101"`` or ``"resnet50"``.
        width_mult: scales every width (at least 8 channels).
        output_stride: 16 (ASPP rates 6, 12, 18) or 8 (rates doubled).
        multi_grid: unit rates of layer4's three blocks, or None for torchvision's dilation.
        dropout: after the ASPP projection (training only).
    """

    with_decoder = False

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        backbone: str = "resnet101",
        width_mult: float = 1.0,
        output_stride: int = 16,
        multi_grid: Sequence[int] | None = (1, 2, 4),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        rates = _aspp_rates(output_stride)
        self.backbone = ResNet(
            backbone, in_channels=in_channels, width_mult=width_mult, output_stride=output_stride, multi_grid=multi_grid
        )
        channels = scaled_width(256, width_mult)
        self.aspp = ASPP(
            self.backbone.channels["layer4"], channels, rates, separable=self.with_decoder, dropout=dropout
        )
        self.low_level: nn.Module | None = None
        self.decoder: nn.Module | None = None
        if self.with_decoder:
            low_channels = scaled_width(48, width_mult)
            self.low_level = ConvBNReLU(self.backbone.channels["layer1"], low_channels, 1)
            self.decoder = nn.Sequential(
                SeparableConvBNReLU(channels + low_channels, channels),
                SeparableConvBNReLU(channels, channels),
            )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        features = self.backbone(x)
        if self.low_level is None or self.decoder is None:
            return upsample_to(self.classifier(self.aspp(features["layer4"])), size)
        low = self.low_level(features["layer1"])
        encoded = upsample_to(self.aspp(features["layer4"]), low.shape[-2:])
        decoded = self.decoder(torch.cat([encoded, low], dim=1))
        return upsample_to(self.classifier(decoded), size)


@register_model(
    "deeplabv3plus", paper=V3PLUS_PAPER, rewrites=(), min_size=32, test_config=_TEST_CONFIG, backbone_weights=True
)
class DeepLabV3Plus(DeepLabV3):
    """DeepLab v3+: the :class:`DeepLabV3` encoder, separable ASPP and a decoder on the stride-4 layer1 features.

    Its options are :class:`DeepLabV3`'s.
    """

    with_decoder = True
