"""PyTorch eager runner: the reference every other runtime is compared with."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.errors import UserInputError
from segdeploy.runtime.base import Runner, check_batch

if TYPE_CHECKING:
    import torch
    from torch import nn


class TorchRunner(Runner):
    """Run an ``nn.Module`` in inference mode on float32 numpy batches.

    Args:
        module: the model; it is put in eval mode (an FP16 run works on a copy).
        precision: ``"fp32"`` or ``"fp16"`` (casts a copy of the module and the input to half).
        threads: torch intra-op threads while active; None keeps the current setting.
        device: ``"cpu"``, ``"cuda"``...; None uses the device of the module's parameters.
    """

    engine = "torch"

    def __init__(
        self, module: nn.Module, precision: str = "fp32", threads: int | None = None, device: str | None = None
    ) -> None:
        super().__init__(precision)
        if precision not in ("fp32", "fp16"):
            raise UserInputError(f"unknown precision {precision!r}: expected fp32 or fp16")
        self.module = module
        self.threads = threads
        self.device = device
        self._model: nn.Module | None = None
        self._saved_threads: int | None = None
        self._in_channels = _first_conv_in_channels(module)

    def activate(self) -> None:
        import torch

        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        model = self.module.eval()
        if self.device is None:
            param = next(model.parameters(), None)
            self.device = str(param.device) if param is not None else "cpu"
        if self.precision == "fp16":
            model = copy.deepcopy(model).half()
        self._model = model.to(self.device)

    def deactivate(self) -> None:
        import torch

        self._model = None
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Float32 ``[N, C, H, W]`` in, float32 logits out (the first output of tuple/dict-returning models)."""
        import torch

        tensor = self._stage(batch)
        with torch.inference_mode():
            out = _logits(self._ensure_model()(tensor))
        return out.float().cpu().numpy()

    def prepare(self, batch: np.ndarray) -> Callable[[], None]:
        import torch

        tensor = self._stage(batch)
        model = self._ensure_model()
        synchronize = torch.cuda.synchronize if tensor.is_cuda else (lambda: None)

        def step() -> None:
            with torch.inference_mode():
                model(tensor)
            synchronize()

        return step

    def _ensure_model(self) -> nn.Module:
        if self._model is None:  # allow use without ``with``: activate on first call
            self.activate()
            self.active = True
        assert self._model is not None
        return self._model

    def _stage(self, batch: np.ndarray) -> torch.Tensor:
        import torch

        self._ensure_model()
        check_batch(batch, self._in_channels)
        tensor = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return tensor.half() if self.precision == "fp16" else tensor


def _first_conv_in_channels(module: nn.Module) -> int | None:
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
    return None


def _logits(out: Any) -> torch.Tensor:
    """Segmentation models may return a tuple (aux heads, side outputs) or a dict (``out``): take the main one."""
    if isinstance(out, dict):
        return out["out"] if "out" in out else next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        return _logits(out[0])
    return out
