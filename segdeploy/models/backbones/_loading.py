"""What loading a torchvision ImageNet checkpoint into a backbone does for either backbone: find it, check, load."""

from __future__ import annotations

import os
from typing import TypeVar

import torch
from torch import nn

from segdeploy.errors import CheckpointError, UserInputError

B = TypeVar("B", bound=nn.Module)


def find_backbone(model: nn.Module, backbone_cls: type[B]) -> B:
    """``model`` itself when it is a ``backbone_cls``, else ``model.backbone``.

    Raises:
        UserInputError: the model holds no ``backbone_cls``.
    """
    backbone = model if isinstance(model, backbone_cls) else getattr(model, "backbone", None)
    if not isinstance(backbone, backbone_cls):
        raise UserInputError(
            f"{type(model).__name__} has no {backbone_cls.__name__} backbone to load ImageNet weights into"
        )
    return backbone


def load_checked(
    model: nn.Module, backbone: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike[str], kind: str
) -> list[str]:
    """Load ``state`` into ``backbone`` after checking every name and shape; the names loaded, as ``model`` has them.

    Raises:
        CheckpointError: missing or unexpected tensors, or shape conflicts, all named in one line.
    """
    from segdeploy.checkpoints import mismatch_problems

    # Checkpoints saved before torch 0.4.1 lack num_batches_tracked; it only counts training steps.
    problems = mismatch_problems(state, backbone.state_dict(), optional_suffixes=("num_batches_tracked",))
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not fit the {kind} backbone (expected torchvision {kind} weights"
            f" at width_mult 1): {'; '.join(problems)}"
        )
    backbone.load_state_dict(state, strict=False)
    prefix = "" if backbone is model else "backbone."
    return [prefix + k for k in state]
