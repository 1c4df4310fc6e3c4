"""The PyTorch side of verification: the model in float32 and in float64, on the same input.

The float32 run is what PyTorch itself gives; the float64 run is the same
weights computed with 29 more bits. Their difference is the model's noise
floor at that input: how far any correct float32 implementation may stray
from the exact function. Verification measures a candidate against the
float64 output in units of that floor.

Index unpooling (SegNet) needs one more step. Max pooling picks, per window,
the first slot equal to the maximum; where two slots differ by less than the
rounding noise, a correct runtime may pick the other one, and the decoder
then puts its value in another place. So the reference can follow the
candidate's window choices: the runner reports each unpooling's pooling input
as the candidate computed it, and both reference runs unpool through the
indices those values give (PyTorch's first-maximum rule). Whether those
choices were legitimate is checked apart: the candidate's pooling inputs must
be within the noise floor of the float64 ones, which bounds every flipped
window to a near-tie.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.artifact import Preprocessing
from segdeploy.errors import UserInputError, first_line
from segdeploy.models.loading import main_output

if TYPE_CHECKING:
    import torch


def normalize(pixels: np.ndarray, preprocessing: Preprocessing, dtype: Any = np.float32) -> np.ndarray:
    """A raw uint8 batch in the file's layout -> the normalized RGB NCHW input the network takes, in ``dtype``.

    The same arithmetic as the fused graph (``segdeploy.export.io``): one multiply-add per channel
    with ``1 / (255 * std)`` and ``-mean / std``, in ``dtype`` throughout.
    """
    x = pixels.astype(dtype)
    if preprocessing.input_format.layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    if preprocessing.color.value == "bgr":
        x = x[:, ::-1]
    mean = np.asarray(preprocessing.mean, dtype=dtype).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing.std, dtype=dtype).reshape(1, -1, 1, 1)
    scale = dtype(1) / (dtype(255) * std)
    return np.ascontiguousarray(x * scale + (-mean / std))


@dataclass
class ReferenceRun:
    """Both reference outputs for one input, and each unpooling's pooling input (NCHW) in both precisions."""

    out32: np.ndarray
    out64: np.ndarray | None
    pool32: list[np.ndarray] = field(default_factory=list)
    pool64: list[np.ndarray] = field(default_factory=list)
    float64_error: str | None = None  # why the float64 run is missing


class Reference:
    """Runs a PyTorch model in float32 and in a float64 copy, optionally following given window choices.

    Args:
        module: the network (taking normalized float NCHW); it is put in eval mode, a float64 copy is made.
        preprocessing: how raw uint8 inputs are normalized (unused for float32 inputs).
        unpool_windows: the window of each index unpooling, in the order the model runs them.
    """

    def __init__(self, module: Any, preprocessing: Preprocessing, unpool_windows: Sequence[int] = ()) -> None:
        self.module = module.eval() if hasattr(module, "eval") else module
        self.preprocessing = preprocessing
        self.unpool_windows = tuple(unpool_windows)
        self._module64: Any = None
        self._float64_error: str | None = None

    def run(
        self, raw: np.ndarray, forced_pool_inputs: Sequence[np.ndarray] | None = None, float64: bool = True
    ) -> ReferenceRun:
        """Both runs on ``raw`` (a batch in the file's input format).

        Args:
            raw: the input the candidate got.
            forced_pool_inputs: the candidate's pooling input of each unpooling (float32 NCHW), whose
                first-maximum window choices both runs then unpool with; None lets PyTorch choose.
            float64: also run the float64 copy (False: the float32 run only, ``out64`` None).

        Raises:
            UserInputError: the model raises on this input (its own error, in one line).
        """
        import torch

        from segdeploy.runtime.base import Runner

        if isinstance(self.module, Runner):  # another file as the reference (an FP32 ONNX for an INT8 one)
            return ReferenceRun(self.module.infer(raw), None, float64_error="the reference is a file, not PyTorch")
        if self.preprocessing.fused:
            x32 = normalize(raw, self.preprocessing, np.float32)
            x64 = normalize(raw, self.preprocessing, np.float64)
        else:
            x32, x64 = raw, raw.astype(np.float64)
        with torch.inference_mode():
            out32, pool32 = self._forward(self.module, torch.from_numpy(np.ascontiguousarray(x32)), forced_pool_inputs)
            out64, pool64 = None, []
            module64 = self._float64() if float64 else None
            if module64 is not None:
                with _default_dtype(torch.float64):
                    out64, pool64 = self._forward(module64, torch.from_numpy(x64), forced_pool_inputs)
        return ReferenceRun(out32, out64, pool32, pool64, self._float64_error if float64 else None)

    def _float64(self) -> Any:
        if self._module64 is None and self._float64_error is None:
            try:
                self._module64 = copy.deepcopy(self.module).double()
            except Exception as exc:  # a module that cannot be copied or cast: verified without a floor
                self._float64_error = f"{type(exc).__name__}: {first_line(exc)}"
        return self._module64

    def _forward(self, module: Any, x: torch.Tensor, forced: Sequence[np.ndarray] | None) -> tuple[Any, list]:
        recorder = _UnpoolRecorder(self.unpool_windows, forced)
        try:
            with recorder:
                out = main_output(module(x))
        except UserInputError:
            raise
        except Exception as exc:
            if x.dtype == _float64():
                self._float64_error = f"{type(exc).__name__}: {first_line(exc)}"
                self._module64 = None
                return None, []
            raise UserInputError(
                f"the model raised on input {tuple(x.shape)}: {type(exc).__name__}: {first_line(exc)}"
            ) from exc
        return out.detach().cpu().numpy(), recorder.pool_inputs


def _float64() -> Any:
    import torch

    return torch.float64


@contextlib.contextmanager
def _default_dtype(dtype: Any) -> Iterator[None]:
    """Tensors a model creates in ``forward`` (zeros, arange...) follow the float64 run."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class _UnpoolRecorder:
    """Records each unpooling's pooling input and, when given, replaces its indices by forced choices.

    Works at the ATen dispatch level, so module and functional calls alike are seen. The indices an
    unpooling gets are traced back to the pooling that made them, whose input is recorded.
    """

    def __init__(self, windows: Sequence[int], forced: Sequence[np.ndarray] | None) -> None:
        self.windows = tuple(windows)
        self.forced = forced
        self.pool_inputs: list[np.ndarray] = []
        self._mode: Any = None

    def __enter__(self) -> _UnpoolRecorder:
        if not self.windows:
            return self
        from segdeploy.export.torch_compat import dispatch_mode_base

        TorchDispatchMode = dispatch_mode_base()

        recorder = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                return recorder._dispatch(func, args, kwargs or {})

        self._pools: list[tuple[Any, Any]] = []
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None
        if exc[0] is None and self.windows and len(self.pool_inputs) != len(self.windows):
            raise UserInputError(
                f"the model ran {len(self.pool_inputs)} index unpoolings, the exported file has "
                f"{len(self.windows)}: it is not the model this file was exported from"
            )

    def _dispatch(self, func: Any, args: Any, kwargs: dict) -> Any:
        import torch

        aten = torch.ops.aten
        if func is aten.max_pool2d_with_indices.default:
            values, indices = func(*args, **kwargs)
            self._pools.append((indices, args[0]))
            return values, indices
        if func is aten.max_unpool2d.default:
            values, indices, *rest = args
            pool_input = next((inp for idx, inp in self._pools if idx is indices), None)
            i = len(self.pool_inputs)
            if pool_input is None or i >= len(self.windows):
                raise UserInputError("the model unpools with indices segdeploy did not see being made")
            self.pool_inputs.append(pool_input.detach().cpu().numpy())
            if self.forced is not None:
                chosen = torch.from_numpy(np.ascontiguousarray(self.forced[i], dtype=np.float32))
                if tuple(chosen.shape) != tuple(pool_input.shape):
                    raise UserInputError(
                        f"unpooling {i}: the file's pooling input is {tuple(chosen.shape)}, the model's "
                        f"{tuple(pool_input.shape)}: it is not the model this file was exported from"
                    )
                k = self.windows[i]
                _, indices = aten.max_pool2d_with_indices.default(chosen, [k, k], [k, k])
            return func(values, indices, *rest, **kwargs)
        return func(*args, **kwargs)
