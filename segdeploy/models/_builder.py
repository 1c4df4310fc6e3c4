"""The tail every zoo builder shares: construct the model, then load ImageNet weights into its backbone if named."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["build_model", "load_backbone_weights"]

M = TypeVar("M", bound=nn.Module)


def build_model(
    model_cls: Callable[..., M], *, backbone_weights: str | os.PathLike[str] | None = None, **options: Any
) -> M:
    """``model_cls(**options)``, with a torchvision ImageNet checkpoint loaded into its backbone when one is named.

    Args:
        model_cls: the model class (or any callable returning the module).
        backbone_weights: optional torchvision ``vgg16`` or ResNet checkpoint, loaded with ``weights_only=True``.
        **options: the model's constructor arguments.

    Returns:
        The model, in training mode as built (``create_model`` switches it to eval).

    Raises:
        UserInputError: the model has no backbone of the checkpoint's kind.
        CheckpointError: the checkpoint is unreadable or does not fit the backbone.
    """
    model = model_cls(**options)
    if backbone_weights is not None:
        load_backbone_weights(model, backbone_weights)
    return model


def load_backbone_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a torchvision ImageNet checkpoint into ``model.backbone`` with the loader of its kind (VGG16 or ResNet).

    Returns:
        The names, in ``model.state_dict()``, of the tensors that were loaded.
    """
    from segdeploy.models.backbones import resnet, vgg

    if isinstance(getattr(model, "backbone", None), vgg.VGG):
        return vgg.load_backbone_weights(model, path)
    return resnet.load_backbone_weights(model, path)
