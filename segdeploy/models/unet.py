"""U-Net (Ronneberger et al., 2015) and UNet++ (Zhou et al., 2018/2019).

Both use "same" 3x3 convolutions, so the output has the input's size. Max
pooling floors odd sizes; each upsampled map is zero-padded on the bottom/right
to its skip connection's size, which makes any H, W >= 32 work (33x47, 97x131).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.models._registry import register_model
from segdeploy.models.layers import conv_bn_relu, scaled_widths

# Base widths of the five resolution levels.
UNET_WIDTHS = (64, 128, 256, 512, 1024)
UNETPP_WIDTHS = (32, 64, 128, 256, 512)  # the UNet++ paper's VGG-style setting (9.04M parameters)


def pad_to_match(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Zero-pad ``x`` on the bottom/right (split evenly) to ``reference``'s height and width.

    The differences come from tensor shapes, not values, so this stays traceable
    with dynamic H/W and runs on the meta device.
    """
    dh = reference.shape[-2] - x.shape[-2]
    dw = reference.shape[-1] - x.shape[-1]
    return F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions (padding 1), each followed by optional BatchNorm and ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, batch_norm: bool = True) -> None:
        # A bias before BatchNorm is redundant: BN's shift replaces it.
        super().__init__(
            *conv_bn_relu(in_channels, out_channels, 3, bias=not batch_norm, batch_norm=batch_norm),
            *conv_bn_relu(out_channels, out_channels, 3, bias=not batch_norm, batch_norm=batch_norm),
        )


class UpConcat(nn.Module):
    """2x transposed convolution, pad to the skip's size, concatenate the skips, DoubleConv."""

    def __init__(
        self, in_channels: int, up_channels: int, skip_channels: int, out_channels: int, *, batch_norm: bool = True
    ) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, up_channels, kernel_size=2, stride=2)
        self.conv = DoubleConv(skip_channels + up_channels, out_channels, batch_norm=batch_norm)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        up = pad_to_match(self.up(x), skips[0])
        return self.conv(torch.cat([*skips, up], dim=1))


@register_model(
    "unet",
    paper="Ronneberger et al., U-Net, MICCAI 2015",
    rewrites=(),
    min_size=32,
    test_config={"width_mult": 0.125},
)
class UNet(nn.Module):
    """U-Net: four max-pool downsamplings, four transposed-conv upsamplings with skip concatenation.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        width_mult: scales the level widths 64, 128, 256, 512, 1024.
        batch_norm: BatchNorm after every 3x3 convolution.

    ``forward(x)`` returns logits ``[N, num_classes, H, W]``.
    """

    def __init__(
        self, *, num_classes: int = 21, in_channels: int = 3, width_mult: float = 1.0, batch_norm: bool = True
    ) -> None:
        super().__init__()
        widths = scaled_widths(UNET_WIDTHS, width_mult)
        self.inc = DoubleConv(in_channels, widths[0], batch_norm=batch_norm)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1], batch_norm=batch_norm))
            for i in range(4)
        )
        # Up from level i+1 to level i: halve channels, concat the level-i skip, back to widths[i].
        self.ups = nn.ModuleList(
            UpConcat(widths[i + 1], widths[i], widths[i], widths[i], batch_norm=batch_norm) for i in reversed(range(4))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, [skips.pop()])
        return self.head(x)


@register_model(
    "unetpp",
    paper="Zhou et al., UNet++, DLMIA 2018 / TMI 2019",
    rewrites=(),
    min_size=32,
    test_config={"width_mult": 0.25, "deep_supervision": True},
)
class UNetPlusPlus(nn.Module):
    """UNet++: nested, dense skip pathways between encoder and decoder, VGG-style double-conv nodes.

    Node X^{i,j} (level i, column j) is a DoubleConv over the concatenation of
    X^{i,0..j-1} and the 2x upsampled X^{i+1,j-1}. The heads are 1x1 convs on
    X^{0,1..4}. With deep supervision, training returns all four heads (one
    loss each); eval returns their average, the paper's "accurate mode".
    Without it, the single head on X^{0,4} is used.

    Args:
        num_classes: output channels.
        in_channels: input channels.
        width_mult: scales the level widths 32, 64, 128, 256, 512.
        deep_supervision: heads on X^{0,1..4}; training returns all four, eval their average (accurate mode).
        batch_norm: BatchNorm after every 3x3 convolution.

    In eval mode ``forward(x)`` returns logits ``[N, num_classes, H, W]``.
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        width_mult: float = 1.0,
        deep_supervision: bool = False,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        widths = scaled_widths(UNETPP_WIDTHS, width_mult)
        self.deep_supervision = deep_supervision
        self.pool = nn.MaxPool2d(2)
        self.encoder = nn.ModuleList(
            DoubleConv(in_channels if i == 0 else widths[i - 1], widths[i], batch_norm=batch_norm) for i in range(5)
        )
        # nested[f"{i}_{j}"] builds X^{i,j} for j >= 1 (levels i + j <= 4).
        self.nested = nn.ModuleDict(
            {
                f"{i}_{j}": UpConcat(widths[i + 1], widths[i], j * widths[i], widths[i], batch_norm=batch_norm)
                for j in range(1, 5)
                for i in range(5 - j)
            }
        )
        head_columns = range(1, 5) if deep_supervision else (4,)
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes, kernel_size=1) for _ in head_columns)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        # grid[i][j] is X^{i,j}
        grid: list[list[torch.Tensor]] = [[self.encoder[0](x)]]
        for i in range(1, 5):
            grid.append([self.encoder[i](self.pool(grid[i - 1][0]))])
        for j in range(1, 5):
            for i in range(5 - j):
                grid[i].append(self.nested[f"{i}_{j}"](grid[i + 1][j - 1], grid[i][:j]))
        top = grid[0][5 - len(self.heads) :]  # X^{0,1..4} with deep supervision, else X^{0,4}
        logits = [head(node) for head, node in zip(self.heads, top)]
        if len(logits) == 1:
            return logits[0]
        if self.training:
            return tuple(logits)
        return torch.stack(logits).mean(dim=0)
