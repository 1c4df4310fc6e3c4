"""Parsing and checking input shapes written as ``NxCxHxW``."""

from __future__ import annotations

from segdeploy.errors import UserInputError

Shape = tuple[int, int, int, int]


def parse_shape(text: str) -> Shape:
    """Parse ``"1x3x512x512"`` into ``(1, 3, 512, 512)``.

    Raises:
        UserInputError: not four positive integers joined by ``x``.
    """
    parts = text.lower().replace("*", "x").replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise UserInputError(f"bad shape {text!r}: expected NxCxHxW with positive integers, e.g. 1x3x512x512")
    return dims  # type: ignore[return-value]


def check_shape(shape: Shape, *, in_channels: int | None = None, min_size: int = 1, what: str = "input") -> Shape:
    """Check an NCHW shape against a model's channels and minimum spatial size.

    Raises:
        UserInputError: wrong rank, channel count or a side below ``min_size``.
    """
    if len(shape) != 4 or any(int(d) <= 0 for d in shape):
        raise UserInputError(f"bad {what} shape {tuple(shape)}: expected NxCxHxW with positive integers")
    n, c, h, w = (int(d) for d in shape)
    if in_channels is not None and c != in_channels:
        raise UserInputError(f"bad {what} shape {n}x{c}x{h}x{w}: the model takes {in_channels} channels")
    if h < min_size or w < min_size:
        raise UserInputError(
            f"bad {what} shape {n}x{c}x{h}x{w}: height and width must be at least {min_size} for this model"
        )
    return (n, c, h, w)


def format_shape(shape: tuple[int, ...]) -> str:
    """``(1, 3, 512, 512)`` -> ``"1x3x512x512"``."""
    return "x".join(str(int(d)) for d in shape)
