"""PyTorch eager runner: a model as PyTorch runs it, for benchmarks and quick checks.

Verification does not use it: its float32/float64 reference lives in ``segdeploy.reference``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.artifact import Precision, Runtime
from segdeploy.errors import UserInputError
from segdeploy.runtime.base import InputSpec, Runner

if TYPE_CHECKING:
    import torch
    from torch import nn


class TorchRunner(Runner):
    """Run an ``nn.Module`` in inference mode on float32 NCHW numpy batches.

    Args:
        module: the model; it is put in eval mode (an FP16 run works on a copy).
        precision: ``fp32`` or ``fp16`` (casts a copy of the module and the input to half).
        threads: torch intra-op threads while active; the previous count is restored on deactivation.
        device: ``"cpu"``, ``"cuda"``...; None uses the device of the module's parameters.
    """

    runtime = Runtime.TORCH

    def __init__(
        self, module: nn.Module, precision: Precision | str = Precision.FP32, threads: int | None = None,
        device: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(precision)
        if self.precision not in (Precision.FP32, Precision.FP16):
            raise UserInputError(f"the torch engine runs fp32 or fp16, not {self.precision.value}")
        self.module = module
        self.threads = threads
        self.device = device
        self._model: nn.Module | None = None
        self._saved_threads: int | None = None

    def _activate(self) -> None:
        import torch

        if self.threads is not None:
            self._saved_threads = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        model = self.module.eval()
        if self.device is None:
            param = next(model.parameters(), None)
            self.device = str(param.device) if param is not None else "cpu"
        if self.precision is Precision.FP16:
            model = copy.deepcopy(model).half()
        self._model = model.to(self.device)
        self.input_spec = InputSpec(np.float32, "NCHW", _first_conv_in_channels(self.module))

    def _deactivate(self) -> None:
        import torch

        self._model = None
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None

    def _run(self, batch: np.ndarray, names: Sequence[str] | None) -> list[np.ndarray]:
        import torch

        from segdeploy.models.loading import main_output

        if names:
            raise UserInputError("the torch engine returns the model's output only, no intermediate tensors")
        assert self._model is not None
        with torch.inference_mode():
            out = main_output(self._model(self._to_device(batch)))
        return [out.float().cpu().numpy()]

    def _prepare(self, batch: np.ndarray) -> Callable[[], None]:
        import torch

        tensor = self._to_device(batch)
        model = self._model
        assert model is not None
        synchronize = torch.cuda.synchronize if tensor.is_cuda else (lambda: None)

        def step() -> None:
            with torch.inference_mode():
                model(tensor)
            synchronize()

        return step

    def _to_device(self, batch: np.ndarray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(batch).to(self.device)
        return tensor.half() if self.precision is Precision.FP16 else tensor


def _first_conv_in_channels(module: nn.Module) -> Any:
    from torch import nn

    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return int(sub.in_channels)
    return None
