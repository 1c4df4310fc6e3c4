"""When a model refuses the shape asked for: the sizes it does take, in one line.

A model whose skips must line up raises torch's ``Sizes of tensors must match ...`` at a height or
width off its multiple; a model that checks its input raises its own message. Either way the user
asked for a shape the model does not take, and what helps is the rule and the nearest sizes that
work. They are found by running the model for real at the sizes each multiple rounds the asked shape
to (below and above): the first multiple at which both run gives the rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from segdeploy.errors import UserInputError
from segdeploy.shapes import Shape, format_shape

if TYPE_CHECKING:
    from torch import nn

_MULTIPLES = (2, 4, 8, 16, 32, 64, 128)


def unfit_shape_error(module: nn.Module, shape: Shape, error: BaseException) -> UserInputError:
    """The error to raise for a model that raised ``error`` at ``shape``.

    Returns:
        A one-line ``UserInputError`` naming the multiple the model takes and the nearest sizes
        when one is found near ``shape``, else ``error`` itself when it is a ``UserInputError``
        (or one wrapping its message).
    """
    n, c, h, w = shape
    for m in _MULTIPLES:
        if h % m == 0 and w % m == 0:
            continue  # already on this multiple: the model raised there
        below = (max(h // m, 1) * m, max(w // m, 1) * m)
        above = (-(-h // m) * m, -(-w // m) * m)
        if _runs(module, (1, c, *below)) and _runs(module, (1, c, *above)):
            return UserInputError(
                f"bad input shape {format_shape(shape)}: the model raises there and runs at heights and widths "
                f"that are multiples of {m} (nearest: {format_shape((n, c, *below))} or "
                f"{format_shape((n, c, *above))}; --verbose shows the model's error)"
            )
    return error if isinstance(error, UserInputError) else UserInputError(str(error))


def _runs(module: nn.Module, shape: tuple[int, int, int, int]) -> bool:
    """The model runs at ``shape`` and returns a map of the input's size (or a fixed fraction of it)."""
    import torch

    from segdeploy.models.loading import main_output

    try:
        with torch.inference_mode():
            out = main_output(module(torch.zeros(shape)))
    except Exception:
        return False
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        return False
    return int(out.shape[2]) * shape[3] == int(out.shape[3]) * shape[2]
