"""Load torchvision ImageNet weights into a zoo model's backbone (VGG16 or ResNet)."""

from __future__ import annotations

import os

from torch import nn

__all__ = ["load_backbone_weights"]


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a torchvision ImageNet checkpoint into ``model.backbone`` with the loader of its kind (VGG16 or ResNet).

    Returns:
        The names, in ``model.state_dict()``, of the tensors that were loaded.

    Raises:
        UserInputError: the model has no backbone of the checkpoint's kind.
        CheckpointError: the checkpoint is unreadable or does not fit the backbone.
    """
    from segdeploy.models.backbones import resnet, vgg

    if isinstance(getattr(model, "backbone", None), vgg.VGG):
        return vgg.load_backbone_weights(model, path)
    return resnet.load_backbone_weights(model, path)
