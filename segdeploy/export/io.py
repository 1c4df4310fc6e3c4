"""Pre- and post-processing fused into the exported graph: raw pixels in, logits, probabilities or a class map out.

``FusedIO`` wraps the network in plain PyTorch before capture, so the fused
steps are captured, rewritten and verified like the rest of the model:

- uint8 input: ``Cast`` to float first (TensorRT takes a uint8 input only when it
  feeds a Cast directly), then NHWC -> NCHW, then BGR -> RGB when asked, then
  ``(x / 255 - mean) / std`` as one multiply-add per channel.
- output: logits as they are; probabilities (softmax over classes, sigmoid for
  one class); or an int32 class map (argmax over classes, ``logit > 0`` for one
  class: ArgMax over a single channel would always say 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from segdeploy.artifact import InputFormat, OutputKind, Preprocessing
from segdeploy.models.loading import main_output

if TYPE_CHECKING:
    pass


class FusedIO(nn.Module):
    """``network`` with the pre-processing of ``preprocessing`` before it and an ``output`` head after it."""

    def __init__(self, network: nn.Module, preprocessing: Preprocessing, output: OutputKind) -> None:
        super().__init__()
        self.network = network
        self.input_format = preprocessing.input_format
        self.flip_channels = preprocessing.fused and preprocessing.color.value == "bgr"
        self.output = output
        if preprocessing.fused:
            mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, -1, 1, 1)
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", -mean / std)
        else:
            self.scale = self.shift = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_format is not InputFormat.FLOAT32_NCHW:
            x = x.float()
            if self.input_format is InputFormat.UINT8_NHWC:
                x = x.permute(0, 3, 1, 2)
            if self.flip_channels:
                x = x.flip(1)
            x = x * self.scale + self.shift
        logits = main_output(self.network(x))
        if self.output is OutputKind.PROBS:
            return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)
        if self.output is OutputKind.CLASSMAP:
            if logits.shape[1] == 1:
                return (logits[:, 0] > 0).to(torch.int32)
            return logits.argmax(dim=1).to(torch.int32)
        return logits
