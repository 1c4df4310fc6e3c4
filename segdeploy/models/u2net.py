"""U²-Net (Qin et al., Pattern Recognition 2020): a U-Net of residual U-blocks (RSU).

Each RSU-L block is itself a small U-Net of depth L whose output is added to
its input convolution; RSU-4F replaces pooling with growing dilation. Six side
outputs, one per decoder stage and the bottom encoder stage, are fused by a
1x1 convolution. Pooling uses ``ceil_mode`` as the paper's code does, and
every upsampling resizes to the exact size of the map it joins, so odd sizes work.
"""

from __future__ import annotations

import torch
from torch import nn

from segdeploy.models._registry import register_model
from segdeploy.models.layers import ConvBNReLU, scaled_widths, upsample_to


def rebnconv(in_channels: int, out_channels: int, dilation: int = 1) -> ConvBNReLU:
    """The paper's REBNCONV: 3x3 convolution with bias and dilation (padding keeps the size), BatchNorm, ReLU."""
    return ConvBNReLU(in_channels, out_channels, 3, dilation=dilation, bias=True)


class RSU(nn.Module):
    """Residual U-block RSU-L with ``depth`` = L: L-1 encoder convs (L-2 poolings), a dilated bottom conv.

    Args:
        depth: L, 4 to 7 in U²-Net.
        in_channels, mid_channels, out_channels: the paper's C_in, M, C_out.
    """

    def __init__(self, depth: int, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = rebnconv(in_channels, out_channels)
        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.encoder = nn.ModuleList(
            rebnconv(out_channels if i == 0 else mid_channels, mid_channels) for i in range(depth - 1)
        )
        self.bottom = rebnconv(mid_channels, mid_channels, dilation=2)
        # decoder[k] joins the map from below with encoder[depth-2-k]; the last one restores out_channels.
        self.decoder = nn.ModuleList(
            rebnconv(2 * mid_channels, out_channels if k == depth - 2 else mid_channels) for k in range(depth - 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.conv_in(x)
        skips = []
        h = x_in
        for i, conv in enumerate(self.encoder):
            h = conv(h if i == 0 else self.pool(h))
            skips.append(h)
        h = self.bottom(h)
        for k, conv in enumerate(self.decoder):
            skip = skips.pop()
            h = conv(torch.cat([h if k == 0 else upsample_to(h, skip.shape[-2:]), skip], dim=1))
        return h + x_in


class RSU4F(nn.Module):
    """RSU-4F: RSU-4 with dilations 1, 2, 4, 8 instead of pooling, for low-resolution stages."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv_in = rebnconv(in_channels, out_channels)
        self.encoder = nn.ModuleList(
            rebnconv(out_channels if d == 1 else mid_channels, mid_channels, dilation=d) for d in (1, 2, 4)
        )
        self.bottom = rebnconv(mid_channels, mid_channels, dilation=8)
        self.decoder = nn.ModuleList(
            rebnconv(2 * mid_channels, out_channels if d == 1 else mid_channels, dilation=d) for d in (4, 2, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_in = self.conv_in(x)
        skips = []
        h = x_in
        for conv in self.encoder:
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for conv in self.decoder:
            h = conv(torch.cat([h, skips.pop()], dim=1))
        return h + x_in


# (block depth or "4F", C_in, M, C_out) of the paper's Table 1, at width 1.
_ENCODER = (
    (7, None, 32, 64),
    (6, 64, 32, 128),
    (5, 128, 64, 256),
    (4, 256, 128, 512),
    ("4F", 512, 256, 512),
    ("4F", 512, 256, 512),
)
_DECODER = (("4F", 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128), (6, 256, 32, 64), (7, 128, 16, 64))


def _block(kind: int | str, in_channels: int, mid_channels: int, out_channels: int) -> nn.Module:
    if kind == "4F":
        return RSU4F(in_channels, mid_channels, out_channels)
    return RSU(int(kind), in_channels, mid_channels, out_channels)


@register_model(
    "u2net",
    paper="Qin et al., U²-Net, Pattern Recognition 2020",
    rewrites=(),
    min_size=32,
    test_config={"width_mult": 0.125},
)
class U2Net(nn.Module):
    """U²-Net: encoder En_1..En_6, decoder De_5..De_1 (top to bottom), six side outputs fused by a 1x1 conv.

    The full 44M-parameter version at ``width_mult=1`` (``num_classes=1`` as in the paper).

    Args:
        num_classes: output channels (the paper's salient-object model has 1).
        in_channels: input channels.
        width_mult: scales every block's mid and output channels.

    Eval returns the fused logits ``[N, num_classes, H, W]`` (no sigmoid).
    Training returns ``(fused, side_1, ..., side_6)``, all at the input size,
    for the paper's deep-supervision loss.
    """

    def __init__(self, *, num_classes: int = 21, in_channels: int = 3, width_mult: float = 1.0) -> None:
        super().__init__()

        def width(c: int) -> int:
            return scaled_widths((c,), width_mult)[0]

        self.pool = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.encoder = nn.ModuleList(
            _block(kind, in_channels if c_in is None else width(c_in), width(m), width(c_out))
            for kind, c_in, m, c_out in _ENCODER
        )
        # Decoder inputs are the concatenation of two maps, so they are summed from scaled parts.
        enc_out = [width(c_out) for *_, c_out in _ENCODER]
        self.decoder = nn.ModuleList()
        below = enc_out[5]
        for stage, (kind, _, m, c_out) in zip(range(4, -1, -1), _DECODER):
            self.decoder.append(_block(kind, below + enc_out[stage], width(m), width(c_out)))
            below = width(c_out)
        # Side outputs from De_1..De_5 and En_6, as in the paper's Fig. 2.
        side_channels = [width(c_out) for *_, c_out in reversed(_DECODER)] + [enc_out[5]]
        self.sides = nn.ModuleList(nn.Conv2d(c, num_classes, 3, padding=1) for c in side_channels)
        self.fuse = nn.Conv2d(6 * num_classes, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skips = []
        h = x
        for i, block in enumerate(self.encoder):
            h = block(h if i == 0 else self.pool(h))
            skips.append(h)
        bottom = skips.pop()
        decoded = []
        h = bottom
        for block in self.decoder:
            skip = skips.pop()
            h = block(torch.cat([upsample_to(h, skip.shape[-2:]), skip], dim=1))
            decoded.append(h)
        # decoded holds De_5..De_1; sides are ordered De_1..De_5, En_6.
        stage_maps = [*reversed(decoded), bottom]
        sides = [upsample_to(side(m), x.shape[-2:]) for side, m in zip(self.sides, stage_maps)]
        fused = self.fuse(torch.cat(sides, dim=1))
        if self.training:
            return (fused, *sides)
        return fused
