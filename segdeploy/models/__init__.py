"""The model zoo: ``list_models()``, ``create_model(name, ...)``, ``model_info(name)``.

Each family lives in its own module (``_FAMILIES``) and registers its model classes
with ``@register_model``: the keyword-only arguments of a class's ``__init__`` are its
options, with their defaults (what ``segdeploy models`` lists). Listing or building a
model imports every family (and torch). What the families share:

- ``layers``: widths, resizing, conv-BN-ReLU, the FCN-style classifier head, initialisation;
- ``_builder``: load torchvision ImageNet weights into a model's backbone;
- ``backbones/``: VGG16 and ResNet-50/101 under torchvision's parameter names;
- ``dilated``: the dilated-ResNet frame with an auxiliary head (PSPNet, GloRe, GCU, GINet);
- ``graph``: the graph-reasoning pieces of GloRe and GINet.
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import TYPE_CHECKING, Any

from segdeploy.errors import UserInputError
from segdeploy.models._registry import BACKBONE_WEIGHTS, ModelInfo, register_model, registered, unknown_model_error

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]

# The modules that register models, in the order ``list_models()`` reports them.
_FAMILIES = ("fcn", "unet", "segnet", "pspnet", "deeplab", "u2net", "glore", "gcu", "ginet")
_loaded = False


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for family in _FAMILIES:
            importlib.import_module(f"segdeploy.models.{family}")
        _loaded = True


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, in registry order."""
    _load_families()
    return [name for name in registered() if fnmatch.fnmatch(name, pattern)]


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``.

    Raises:
        UserInputError: unknown name; the message lists the known ones.
    """
    _load_families()
    try:
        return registered()[name]
    except KeyError:
        raise unknown_model_error(name, list(registered())) from None


def create_model(name: str, *, num_classes: int = 21, in_channels: int = 3, **config: Any) -> nn.Module:
    """Build a zoo model in eval mode.

    Args:
        name: a name from ``list_models()``.
        num_classes: output channels of the logits.
        in_channels: input image channels.
        **config: architecture options (``width_mult``, ``backbone``, ...; ``model_info(name).options()``),
            and ``backbone_weights`` (a torchvision ImageNet checkpoint) for models with a VGG or ResNet backbone.

    Returns:
        The model, in eval mode; ``forward(x)`` returns logits ``[N, num_classes, H, W]``.

    Raises:
        UserInputError: unknown name or option, an option value of the wrong type or one the model refuses,
            or a backbone checkpoint that does not fit.
    """
    info = model_info(name)
    if num_classes < 1 or in_channels < 1:
        raise UserInputError(f"num_classes and in_channels must be positive (got {num_classes}, {in_channels})")
    info.check_options(config)
    options = dict(config)
    backbone_weights = options.pop(BACKBONE_WEIGHTS, None)
    model = info.builder(num_classes=num_classes, in_channels=in_channels, **options)
    if backbone_weights is not None:
        from segdeploy.models._builder import load_backbone_weights

        load_backbone_weights(model, backbone_weights)
    return model.eval()
