"""VGG16, with and without BatchNorm, under torchvision's parameter names.

``VGG(batch_norm=False)`` is torchvision's ``vgg16().features`` and
``VGG(batch_norm=True)`` its ``vgg16_bn().features``: the layers sit in the
``nn.Sequential`` attribute ``features`` at torchvision's indices (vgg16 convs
at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; vgg16_bn convs at 0, 3, 7,
... with each BatchNorm right after its conv), so a torchvision ImageNet
``state_dict`` loads with ``load_state_dict(sd, strict=False)`` (the
classifier is left over) or with :func:`load_backbone_weights`.

Stages: the 13 convs form 5 stages, each closed by a max pool.

- ``forward_stages(x)`` returns the 5 feature maps after pool1..pool5
  (strides 2, 4, 8, 16, 32; with ``output_stride=8``: 2, 4, 8, 8, 8).
- ``stage_channels`` holds their channel counts (64, 128, 256, 512, 512 at
  ``width_mult=1``).
- ``stage_layer_ranges`` holds, per stage, ``(start, pool_index)``: its
  conv/BN/ReLU layers are ``features[start:pool_index]`` and its pool is
  ``features[pool_index]``, for models that need the pre-pool maps (SegNet
  pools with indices itself).

``output_stride=8`` follows DeepLab-LargeFOV: pool4 and pool5 become 3x3
stride 1 padding 1 and the conv5 layers get dilation 2.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models.backbones._loading import find_backbone, load_checked
from segdeploy.models.layers import conv_bn_relu, init_like_torchvision, scaled_width

__all__ = ["VGG", "load_backbone_weights"]

# torchvision's configuration "D" (VGG16): conv widths per stage.
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(nn.Module):
    """The 13-conv VGG16 feature extractor (no classifier).

    Args:
        batch_norm: BatchNorm after every conv (torchvision's ``vgg16_bn``).
        in_channels: input channels of the first conv.
        width_mult: scales every conv width (at least 8 channels); 1.0 is the published network.
        output_stride: 32 (plain VGG) or 8 (DeepLab-LargeFOV: pool4/pool5 stride 1, conv5 dilation 2).
        ceil_mode: max pools round their output size up, as Caffe does (FCN-8s).
        first_padding: padding of conv1_1 (FCN-8s uses 100).
    """

    def __init__(
        self,
        *,
        batch_norm: bool = False,
        in_channels: int = 3,
        width_mult: float = 1.0,
        output_stride: int = 32,
        ceil_mode: bool = False,
        first_padding: int = 1,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 32):
            raise UserInputError(f"VGG output_stride must be 8 or 32 (got {output_stride})")
        if width_mult <= 0:
            raise UserInputError(f"width_mult must be positive (got {width_mult})")
        layers: list[nn.Module] = []
        self.stage_channels: list[int] = []
        self.stage_layer_ranges: list[tuple[int, int]] = []
        channels = in_channels
        for stage, widths in enumerate(_VGG16_STAGES):
            dilated = output_stride == 8 and stage == 4
            start = len(layers)
            for width in widths:
                out = scaled_width(width, width_mult)
                padding = first_padding if not layers else None  # None: "same" padding
                layers += conv_bn_relu(
                    channels, out, 3, dilation=2 if dilated else 1, padding=padding, bias=True, batch_norm=batch_norm
                )
                channels = out
            pool_index = len(layers)
            if output_stride == 8 and stage >= 3:
                layers.append(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=ceil_mode))
            else:
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode))
            self.stage_channels.append(channels)
            self.stage_layer_ranges.append((start, pool_index))
        self.features = nn.Sequential(*layers)
        self.batch_norm = batch_norm
        self.out_channels = channels
        init_like_torchvision(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The pool5 feature map."""
        return self.features(x)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps after each of the 5 pools (channels: ``stage_channels``)."""
        outputs = []
        for start, pool_index in self.stage_layer_ranges:
            for index in range(start, pool_index + 1):
                x = self.features[index](x)
            outputs.append(x)
        return outputs


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a torchvision-format ImageNet VGG16 checkpoint into a model's VGG backbone.

    The ``features.*`` tensors go into the backbone; torchvision's classifier is
    ignored, except that when the model has ``fc6``/``fc7`` convolutions shaped
    like ``classifier.0``/``classifier.3`` (FCN-8s: 7x7 conv 512 -> 4096 and 1x1
    conv 4096 -> 4096), those Linear weights are reshaped into them. That is
    exact: torchvision flattens the 512x7x7 map in (C, H, W) order, the order
    of a conv weight's last three axes.

    Args:
        model: a :class:`VGG`, or a model holding one as ``model.backbone``
            (``fcn8s``, ``segnet``).
        path: the checkpoint, e.g. torchvision's ``vgg16-397923af.pth`` or
            ``vgg16_bn-6c64b313.pth``, loaded with ``weights_only=True``.

    Returns:
        The names, in ``model.state_dict()``, of the tensors that were loaded.

    Raises:
        UserInputError: the model has no VGG backbone.
        CheckpointError: unreadable file, or its ``features`` do not fit the
            backbone (BatchNorm or not, ``in_channels``, ``width_mult``).
    """
    from segdeploy.checkpoints import load_checkpoint

    backbone = find_backbone(model, VGG)
    state = load_checkpoint(path)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    loaded = load_checked(model, backbone, features, path, "vgg16_bn" if backbone.batch_norm else "vgg16")
    for fc_name, linear_name in (("fc6", "classifier.0"), ("fc7", "classifier.3")):
        loaded += _load_linear_into_conv(model, fc_name, state, linear_name)
    return loaded


def _load_linear_into_conv(
    model: nn.Module, conv_name: str, state: dict[str, torch.Tensor], linear_name: str
) -> list[str]:
    conv = getattr(model, conv_name, None)
    weight = state.get(f"{linear_name}.weight")
    bias = state.get(f"{linear_name}.bias")
    if not isinstance(conv, nn.Conv2d) or weight is None or bias is None:
        return []
    if weight.shape[0] != conv.out_channels or weight.numel() != conv.weight.numel() or conv.bias is None:
        return []  # another head (e.g. DeepLab's 3x3 fc6): nothing to convert
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(conv.weight.shape))
        conv.bias.copy_(bias)
    return [f"{conv_name}.weight", f"{conv_name}.bias"]
