"""FCN-8s (Long, Shelhamer, Darrell, CVPR 2015) on VGG16.

The layout follows the reference Caffe model ``voc-fcn8s``: conv1_1 padded by
100 and Caffe's ceil-mode pools, so that every input size leaves enough room
for the crops; fc6/fc7 as convolutions (7x7 and 1x1, 4096 channels, ReLU and
dropout); 1x1 score layers on fc7, pool4 and pool3; learned transposed
convolutions 2x, 2x and 8x initialised to bilinear upsampling; crops at
offsets 5, 9 and 31 (spatial axes only) that align the maps.

Differences from the reference, on purpose: the score layers keep PyTorch's
default initialisation instead of zeros (random-weight parity checks then
exercise every branch), and the 0.01 / 0.0001 input scaling of the pool4 /
pool3 score layers (the all-at-once training of the journal version) is off
unless ``skip_scaling=True``.

ImageNet weights: :func:`segdeploy.models.backbones.vgg.load_backbone_weights`
loads torchvision's ``vgg16`` into ``backbone`` and converts its
``classifier.0`` / ``classifier.3`` into ``fc6`` / ``fc7``.
"""

from __future__ import annotations

import torch
from torch import nn

from segdeploy.models._registry import register_model
from segdeploy.models.backbones.vgg import VGG
from segdeploy.models.layers import scaled_width

__all__ = ["FCN8s"]

# Offsets of the reference crops (Caffe voc-fcn8s): where the upsampled map lines up with the finer one.
_POOL4_OFFSET = 5
_POOL3_OFFSET = 9
_OUTPUT_OFFSET = 31


@register_model(
    "fcn8s",
    paper="Long et al., FCN, CVPR 2015",
    rewrites=(),
    min_size=32,
    # pad 100 makes even a 64x64 input a 262x262 conv1 map: the smallest widths keep tests fast
    test_config={"width_mult": 0.0625},
)
class FCN8s(nn.Module):
    """FCN-8s: VGG16 features, convolutional fc6/fc7, skips from pool3 and pool4; 134.5M parameters with 21 classes.

    Args:
        num_classes: output channels.
        in_channels: input image channels.
        width_mult: scales every VGG and fc width (at least 8); 1.0 is the paper's network.
        skip_scaling: multiply pool4 by 0.01 and pool3 by 0.0001 before their score layers (all-at-once training).

    ``forward(x)`` gives logits ``[N, num_classes, H, W]``.
    """

    def __init__(
        self, *, num_classes: int = 21, in_channels: int = 3, width_mult: float = 1.0, skip_scaling: bool = False
    ) -> None:
        super().__init__()
        self.backbone = VGG(in_channels=in_channels, width_mult=width_mult, ceil_mode=True, first_padding=100)
        fc_width = scaled_width(4096, width_mult)
        self.fc6 = nn.Conv2d(self.backbone.out_channels, fc_width, 7)
        self.fc7 = nn.Conv2d(fc_width, fc_width, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(0.5)
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        self.score_pool4 = nn.Conv2d(self.backbone.stage_channels[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(self.backbone.stage_channels[2], num_classes, 1)
        self.upscore2 = _bilinear_upsampler(num_classes, 2)
        self.upscore_pool4 = _bilinear_upsampler(num_classes, 2)
        self.upscore8 = _bilinear_upsampler(num_classes, 8)
        self.skip_scaling = skip_scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pool3, pool4, pool5 = self.backbone.forward_stages(x)[2:]
        if self.skip_scaling:
            pool3, pool4 = pool3 * 0.0001, pool4 * 0.01
        h = self.dropout(self.relu(self.fc6(pool5)))
        h = self.dropout(self.relu(self.fc7(h)))
        h = self.upscore2(self.score_fr(h))
        h = h + _crop(self.score_pool4(pool4), _POOL4_OFFSET, h.shape[-2], h.shape[-1])
        h = self.upscore_pool4(h)
        h = h + _crop(self.score_pool3(pool3), _POOL3_OFFSET, h.shape[-2], h.shape[-1])
        return _crop(self.upscore8(h), _OUTPUT_OFFSET, height, width)


def _crop(x: torch.Tensor, offset: int, height: int, width: int) -> torch.Tensor:
    # Spatial axes only: N and C stay whole.
    return x[:, :, offset : offset + height, offset : offset + width]


def _bilinear_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable per-class ``factor``x upsampler initialised to bilinear interpolation (as in FCN)."""
    kernel_size = 2 * factor
    layer = nn.ConvTranspose2d(channels, channels, kernel_size, stride=factor, bias=False)
    # Kernel of size 2f centred between taps (f - 0.5): the weights 1 - |i - c| / f.
    taps = torch.arange(kernel_size, dtype=torch.float32)
    profile = 1 - (taps - (factor - 0.5)).abs() / factor
    kernel = profile[:, None] * profile[None, :]
    # Each class upsamples only itself: diagonal in (in, out) channels.
    weight = torch.eye(channels)[:, :, None, None] * kernel
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer
