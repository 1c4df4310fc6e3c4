"""The one contract every runner (torch, onnxruntime, TensorRT) follows.

A runner is a context manager: ``activate`` loads what it needs, ``infer``
maps a float32 NCHW numpy batch to float32 logits, ``deactivate`` frees it.
Heavy backends are imported inside ``activate``, never at module import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from segdeploy.errors import UserInputError
from segdeploy.shapes import format_shape


class Runner:
    """Base class of all runners.

    Attributes:
        engine: ``"torch"``, ``"ort"`` or ``"trt"``.
        precision: ``"fp32"`` or ``"fp16"``.
    """

    engine: str = "?"

    def __init__(self, precision: str = "fp32") -> None:
        self.precision = precision
        self.active = False

    def __enter__(self) -> Runner:
        self.activate()
        self.active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()
        self.active = False

    def activate(self) -> None:
        """Load the model/engine. Called once by ``__enter__``."""

    def deactivate(self) -> None:
        """Release what ``activate`` loaded."""

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch: float32 ``[N, C, H, W]`` in, float32 logits ``[N, K, H, W]`` out."""
        raise NotImplementedError

    def prepare(self, batch: np.ndarray) -> Callable[[], None]:
        """Stage ``batch`` where the engine wants it and return a zero-argument step.

        The benchmark times the returned step, so it must exclude host-to-device
        copies for GPU engines and must block until the result is ready.
        The default simply calls ``infer``.
        """
        return lambda: self.infer(batch)

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"


def check_batch(batch: np.ndarray, in_channels: int | None, hw: tuple[Any, Any] = (None, None)) -> None:
    """Refuse a batch that is not NCHW with the expected channels (and static H/W when given).

    Raises:
        UserInputError: naming the given and the expected shape.
    """
    h, w = (d if isinstance(d, int) else name for d, name in zip(hw, "HW"))
    expected = f"Nx{in_channels if in_channels else 'C'}x{h}x{w}"
    if batch.ndim != 4:
        raise UserInputError(f"bad input shape {format_shape(batch.shape)}: expected {expected} (rank 4, NCHW)")
    _, c, bh, bw = batch.shape
    if (in_channels and c != in_channels) or any(isinstance(d, int) and d != b for d, b in zip(hw, (bh, bw))):
        raise UserInputError(f"bad input shape {format_shape(batch.shape)}: the model expects {expected}")
