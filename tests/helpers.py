"""Helpers shared by tests: weights that behave like trained ones, and small user models as people write them."""

from __future__ import annotations

import textwrap
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.export.rewrites import adaptive_avg_pool2d_exact, unpool_first_max


def calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...], batches: int = 3, seed: int = 0) -> nn.Module:
    """BatchNorm statistics from a few random batches (cumulative average), as any trained model has; eval mode after.

    Untouched BatchNorm layers (mean 0, variance 1) make deep nets blow up or collapse, which hides
    export bugs and fakes near-ties; calibrated statistics keep activations in a realistic range.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(shape, generator=generator))
    return model.eval()


def export_stock_onnx(model: nn.Module, path: Any, example_shape: tuple[int, ...], opset: int = 17) -> Any:
    """``model`` through the stock dynamo exporter, dynamic N/H/W: an FP32 file for the FP16 and INT8 passes."""
    import onnx

    dim = torch.export.Dim
    axes = {0: dim("batch", min=1, max=64), 2: dim("height", min=8, max=8192), 3: dim("width", min=8, max=8192)}
    torch.onnx.export(
        model.eval(),
        (torch.randn(*example_shape),),
        path,
        dynamo=True,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=(axes,),
        verbose=False,
    )
    return onnx.load(path)


def run_onnx(model: Any, x: Any) -> Any:
    """One single-threaded ONNX Runtime run of an in-memory model on its ``input``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


# SegNet as learners write it: functional unpooling WITHOUT output_size, so it works only at multiples of 32.
TEXTBOOK_SEGNET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TextbookSegNet(nn.Module):
        def __init__(self, num_classes=4, in_channels=3):
            super().__init__()
            enc = [(in_channels, 8), (8, 8), (8, 12), (12, 12), (12, 16)]
            dec = [(16, 12), (12, 12), (12, 8), (8, 8), (8, 8)]
            conv = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            self.enc = nn.ModuleList(conv(a, b) for a, b in enc)
            self.dec = nn.ModuleList(conv(a, b) for a, b in dec)
            self.classifier = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):
            indices = []
            for stage in self.enc:
                x, i = F.max_pool2d(stage(x), 2, 2, return_indices=True)
                indices.append(i)
            for stage, i in zip(self.dec, reversed(indices)):
                x = stage(F.max_unpool2d(x, i, 2, 2))
            return self.classifier(x)

    def build(num_classes=4, in_channels=3):
        return TextbookSegNet(num_classes, in_channels)
    """
)

# A U-Net without size matching: four 2x downsamplings whose skips must line up (multiples of 16).
STRICT_UNET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())

    class StrictUNet(nn.Module):
        def __init__(self, num_classes=3, in_channels=3):
            super().__init__()
            w = [8, 8, 12, 12, 16]
            self.down = nn.ModuleList([block(in_channels, w[0])] + [block(w[i], w[i + 1]) for i in range(4)])
            self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, 2) for i in range(4))
            self.fuse = nn.ModuleList(block(2 * w[i], w[i]) for i in range(4))
            self.head = nn.Conv2d(w[0], num_classes, 1)

        def forward(self, x):
            skips = []
            for i, stage in enumerate(self.down):
                x = stage(x if i == 0 else F.max_pool2d(x, 2))
                skips.append(x)
            for i in reversed(range(4)):
                x = self.fuse[i](torch.cat([self.up[i](x), skips[i]], dim=1))
            return self.head(x)
    """
)

# A model that checks its input like many library models do, and raises on anything else.
DIVISIBLE_BY_32 = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Checked(nn.Module):
        def __init__(self, num_classes=2):
            super().__init__()
            self.encode = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.Conv2d(8, 8, 3, stride=8, padding=1), nn.ReLU())
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):
            h, w = x.shape[-2:]
            if h % 32 or w % 32:
                raise RuntimeError(
                    f"Wrong input shape height={h}, width={w}. Expected image height and width divisible by 32."
                )
            return F.interpolate(self.head(self.encode(x)), size=(h, w), mode="bilinear", align_corners=False)
    """
)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class TinySegNet(nn.Module):
    """One max-pool/unpool stage with a pyramid-pooling context (bins 1 and 3) in between.

    It calls the export rewrites' plain-PyTorch functions itself, so its ONNX has the graph segdeploy's
    export writes without depending on that pipeline.
    """

    def __init__(self, width: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, width)
        self.middle = conv_bn_relu(width, 2 * width)
        self.context = nn.Conv2d(6 * width, width, 1)
        self.decoder = nn.Sequential(conv_bn_relu(width, width), nn.Conv2d(width, num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        y = self.middle(F.max_pool2d(skip, 2, 2))
        size = y.shape[-2:]
        pooled = [
            F.interpolate(adaptive_avg_pool2d_exact(y, [bins, bins]), size=size, mode="bilinear", align_corners=False)
            for bins in (1, 3)
        ]
        y = self.context(torch.cat([y, *pooled], dim=1))
        return self.decoder(unpool_first_max(skip, y, 2, list(skip.shape[-2:])))
