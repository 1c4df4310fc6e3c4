"""The one contract every runner (torch, ONNX Runtime, TensorRT) follows.

A runner is a context manager. The base class owns the contract: activation
state, the input check, which output is the main one, and how a run is timed.
Subclasses write only ``_activate``/``_deactivate``, ``_input_spec``, ``_run``
and, when the engine has its own clock, ``measure``. Heavy backends are
imported inside ``_activate``, never at module import.

A batch is the model file's input as it is: float32 NCHW for a plain export,
raw uint8 frames (NHWC or NCHW) when pre-processing is fused into the graph.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from segdeploy.artifact import Precision, Runtime, parse_precision
from segdeploy.errors import UserInputError
from segdeploy.shapes import format_shape, size_problem

DEFAULT_SECONDS = 3.0
MIN_ITERATIONS = 10


@dataclass(frozen=True)
class InputSpec:
    """What a runner's input takes: dtype, layout, channel count and any fixed dimensions."""

    dtype: Any = np.float32
    layout: str = "NCHW"
    channels: int | None = None
    fixed: dict[int, int] = field(default_factory=dict)  # axis -> size for static dimensions
    sizes: tuple[int, int, int | None] | None = None  # (multiple, min, max) of H and W: a file's size rule

    def expected(self) -> str:
        """E.g. ``"Nx3xHxW float32"`` or ``"1x512x512x3 uint8"``."""
        dims = {axis: axis for axis in self.layout}
        if self.channels is not None:
            dims["C"] = str(self.channels)
        for index, size in self.fixed.items():
            dims[self.layout[index]] = str(size)
        return "x".join(dims[axis] for axis in self.layout) + f" {np.dtype(self.dtype).name}"

    def random_batch(self, nchw: Sequence[int], rng: np.random.Generator) -> np.ndarray:
        """A random input for an NCHW model shape: standard normal floats, or a smooth noisy uint8 image."""
        n, c, h, w = (int(d) for d in nchw)
        if np.dtype(self.dtype) != np.uint8:
            return rng.standard_normal((n, c, h, w), dtype=np.float32)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        slopes = rng.uniform(-60, 60, (2, n, c, 1, 1))
        base = rng.uniform(40, 215, (n, c, 1, 1)) + slopes[0] * yy + slopes[1] * xx
        pixels = np.clip(base + rng.normal(0, 25, (n, c, h, w)), 0, 255).round().astype(np.uint8)
        return pixels.transpose(0, 2, 3, 1).copy() if self.layout == "NHWC" else pixels


def check_batch(batch: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The batch as the runner feeds it, or a one-line refusal naming the expected shape.

    Float batches are cast to the input's float type (an FP16-I/O model takes float32 batches);
    a uint8 input takes only uint8 batches (a float image would silently be truncated).

    Raises:
        UserInputError: wrong rank, channels, fixed dimension or dtype.
    """
    batch = np.asarray(batch)
    if batch.ndim != 4:
        raise UserInputError(f"bad input shape {format_shape(batch.shape)}: expected {spec.expected()} (rank 4)")
    channel_axis = spec.layout.index("C")
    wrong_channels = spec.channels is not None and batch.shape[channel_axis] != spec.channels
    wrong_fixed = any(batch.shape[axis] != size for axis, size in spec.fixed.items())
    if wrong_channels or wrong_fixed:
        raise UserInputError(f"bad input shape {format_shape(batch.shape)}: the model expects {spec.expected()}")
    if spec.sizes is not None:
        h, w = (batch.shape[spec.layout.index(axis)] for axis in "HW")
        problem = size_problem(int(h), int(w), *spec.sizes)
        if problem:
            raise UserInputError(f"bad input shape {format_shape(batch.shape)}: {problem}")
    want = np.dtype(spec.dtype)
    if want == np.uint8 and batch.dtype != np.uint8:
        raise UserInputError(f"bad input dtype {batch.dtype}: this model takes raw uint8 pixels ({spec.expected()})")
    return np.ascontiguousarray(batch, dtype=want)


@dataclass
class Measurement:
    """Timed steps of one runner on one batch, in milliseconds.

    ``latency_ms`` is what throughput is computed from: wall-clock steps on the CPU, GPU compute
    (CUDA events around the enqueue) for TensorRT, whose end-to-end times (copies included) come beside.
    """

    latency_ms: list[float]
    timing: str = "wall"
    gpu_compute_ms: list[float] | None = None
    end_to_end_ms: list[float] | None = None


class Runner:
    """Base class of all runners; see the module docstring for the contract.

    Attributes:
        engine: which runtime.
        timing: ``"wall"`` (CPU wall clock around each step) or ``"cuda_events"``.
        precision: the model's precision (selects verification criteria).
    """

    runtime: ClassVar[Runtime]
    timing: ClassVar[str] = "wall"

    def __init__(self, precision: Precision | str = Precision.FP32) -> None:
        self.precision = parse_precision(precision)
        self.is_active = False
        self.input_spec = InputSpec()

    # ------------------------------------------------------------------ what subclasses write
    def _activate(self) -> None:
        """Load the model or engine; set ``self.input_spec``."""

    def _deactivate(self) -> None:
        """Release what ``_activate`` loaded."""

    def _run(self, batch: np.ndarray, names: Sequence[str] | None) -> list[np.ndarray]:
        """Run a checked batch; return the main output (``names`` None) or the named outputs."""
        raise NotImplementedError

    def _prepare(self, batch: np.ndarray) -> Callable[[], None]:
        """Stage a checked batch and return a step that runs it and blocks until done (no host copies on GPUs)."""
        return lambda: self._run(batch, None)

    # ------------------------------------------------------------------ the contract
    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.deactivate()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch in the model's input format; return the main output (logits, probs or class map)."""
        self.activate()
        return self._run(check_batch(batch, self.input_spec), None)[0]

    def infer_outputs(self, batch: np.ndarray, names: Sequence[str]) -> list[np.ndarray]:
        """The main output followed by the named intermediate tensors, for engines that expose them.

        Raises:
            UserInputError: the engine cannot return intermediate tensors.
        """
        self.activate()
        return self._run(check_batch(batch, self.input_spec), list(names))

    def prepare(self, batch: np.ndarray) -> Callable[[], None]:
        """Stage ``batch`` where the engine wants it and return a zero-argument step to time."""
        self.activate()
        return self._prepare(check_batch(batch, self.input_spec))

    def measure(
        self,
        batch: np.ndarray,
        *,
        warmup: int = 10,
        iters: int | None = None,
        seconds: float | None = None,
        min_iters: int = MIN_ITERATIONS,
        cuda_graph: bool = False,
    ) -> Measurement:
        """Time steps on ``batch``: ``warmup`` untimed, then ``iters`` steps or ``seconds`` (>= ``min_iters``).

        Each step is timed alone with ``time.perf_counter_ns``, with the garbage collector paused
        so that the harness's own allocations add no pauses.
        """
        if cuda_graph:
            raise UserInputError(f"CUDA graphs apply to TensorRT only, not to the {self.runtime.value} engine")
        step = self.prepare(batch)
        for _ in range(warmup):
            step()
        return Measurement(timed_loop(step, iters, seconds, min_iters))

    @property
    def label(self) -> str:
        return f"{self.runtime.value}-{self.precision.value}"


def timed_loop(step: Callable[[], Any], iters: int | None, seconds: float | None, min_iters: int) -> list[float]:
    """Milliseconds of each call of ``step``, until ``iters`` calls or ``seconds`` (at least ``min_iters``)."""
    if iters is None and seconds is None:
        seconds = DEFAULT_SECONDS
    deadline = None if seconds is None else time.perf_counter_ns() + int(seconds * 1e9)
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            start = time.perf_counter_ns()
            step()
            end = time.perf_counter_ns()
            samples.append((end - start) / 1e6)
            if iters is not None and len(samples) >= iters:
                break
            if deadline is not None and end >= deadline and len(samples) >= min_iters:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples


def main_output_index(names: Sequence[str]) -> int:
    """Which of a model's outputs is the segmentation output: a segdeploy name if present, else the first."""
    from segdeploy.artifact import OUTPUT_NAMES

    wanted = set(OUTPUT_NAMES.values())
    return next((i for i, name in enumerate(names) if name in wanted), 0)
