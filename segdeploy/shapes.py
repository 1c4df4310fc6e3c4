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


def size_problem(h: int, w: int, multiple: int = 1, min_size: int = 1, max_size: int | None = None) -> str | None:
    """Why ``h`` x ``w`` is off a size rule, naming the rule and the nearest valid sizes; None when it fits."""
    m = max(int(multiple), 1)
    low = -(-max(int(min_size), 1) // m) * m
    high = max_size // m * m if max_size else None
    if h % m == 0 and w % m == 0 and min(h, w) >= low and (high is None or max(h, w) <= high):
        return None

    def clamp(side: int) -> int:
        side = max(side, low)
        return min(side, high) if high is not None else side

    below = (clamp(h // m * m), clamp(w // m * m))
    above = (clamp(-(-h // m) * m), clamp(-(-w // m) * m))
    shown = " or ".join(dict.fromkeys(f"{a}x{b}" for a, b in (below, above)))
    rule = f"multiples of {m}, " if m > 1 else ""
    upper = f" and at most {high}" if high is not None else ""
    return f"this model takes heights and widths that are {rule}at least {low}{upper} (nearest: {shown})"
