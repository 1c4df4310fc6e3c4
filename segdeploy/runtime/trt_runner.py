"""Run a TensorRT engine with torch CUDA tensors as I/O (no pycuda).

The runner refuses, before deserializing, an engine whose sidecar names
another TensorRT version or GPU compute capability (TensorRT would fail with a
cryptic message or not at all), and rejects input shapes outside the engine's
optimization profile before anything runs.

TensorRT calls follow NVIDIA's Python API reference, the same on 10.x and 11.x:
  [RT]  https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/Runtime.html
  [ENG] https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/_static/python-api/infer/Core/Engine.html
  [CTX] https://docs.nvidia.com/deeplearning/tensorrt/latest/_static/python-api/infer/Core/ExecutionContext.html
checked against the bindings (NVIDIA/TensorRT python/src/infer/pyCore.cpp, tags v10.3.0 and v11.1).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from segdeploy.artifact import Precision, Runtime
from segdeploy.errors import SegdeployError, UserInputError
from segdeploy.runtime.base import InputSpec, Measurement, Runner, main_output_index
from segdeploy.runtime.sidecar import EngineLoadFacts, EngineSidecar, sidecar_path
from segdeploy.runtime.trt_build import Profile, require_tensorrt
from segdeploy.shapes import format_shape

REBUILD_HINT = "rebuild it on this machine with `segdeploy build MODEL.onnx`"


def check_engine_compatible(
    facts: EngineLoadFacts,
    *,
    engine_path: str | Path,
    engine_sha256: str,
    trt_version: str,
    compute_capability: str,
) -> None:
    """Refuse an engine built for another TensorRT version or GPU architecture.

    An engine deserializes only on the exact TensorRT version that built it and the same compute
    capability (unless built version/hardware compatible, which segdeploy does not do).

    Args:
        facts: the engine's facts, from its ``.json`` sidecar or a bundle's manifest.
        engine_path: for messages.
        engine_sha256: sha256 of the engine bytes about to be loaded.
        trt_version: ``tensorrt.__version__`` here.
        compute_capability: this GPU's ``"major.minor"``.

    Raises:
        UserInputError: the facts describe another engine, TensorRT version or compute capability.
    """
    if facts.engine_sha256 and facts.engine_sha256 != engine_sha256:
        raise UserInputError(
            f"{sidecar_path(engine_path)} describes a different engine than {engine_path} (sha256 differs): "
            f"delete the stale sidecar or {REBUILD_HINT}"
        )
    if facts.tensorrt_version and facts.tensorrt_version != str(trt_version):
        raise UserInputError(
            f"{engine_path} was built with TensorRT {facts.tensorrt_version} but this machine has TensorRT "
            f"{trt_version}; engines only load on the version that built them: {REBUILD_HINT}"
        )
    if facts.compute_capability and facts.compute_capability != str(compute_capability):
        raise UserInputError(
            f"{engine_path} was built for compute capability {facts.compute_capability} "
            f"({facts.gpu_name or 'another GPU'}) but this GPU is compute "
            f"{compute_capability}: {REBUILD_HINT}"
        )


def check_in_profile(
    shape: Sequence[int], profile_min: Sequence[int], profile_max: Sequence[int], input_name: str = "input"
) -> None:
    """Reject a shape outside the engine's optimization profile, naming the allowed range.

    Raises:
        UserInputError: wrong rank or any dimension outside [min, max].
    """
    shape = tuple(int(d) for d in shape)
    lo, hi = tuple(int(d) for d in profile_min), tuple(int(d) for d in profile_max)
    if len(shape) != len(lo) or any(not a <= s <= b for s, a, b in zip(shape, lo, hi)):
        raise UserInputError(
            f"input shape {format_shape(shape)} is outside the engine's profile for {input_name!r}: "
            f"from {format_shape(lo)} to {format_shape(hi)} per dimension; "
            "rebuild with --min-shape/--max-shape to cover it"
        )


@dataclass(frozen=True)
class EngineIO:
    """The engine's tensors: one input (with its profile 0 range) and its outputs, ``logits`` first."""

    input_name: str
    input_dtype: Any  # torch.dtype
    outputs: tuple[tuple[str, Any], ...]  # (name, torch.dtype)
    profile: Profile


@dataclass
class _Binding:
    """Device tensors bound to the context; they must stay alive while TensorRT may use them."""

    shape: tuple[int, ...]
    input: Any  # torch.Tensor
    outputs: list[Any]


class TrtRunner(Runner):
    """Run a serialized TensorRT engine on the current CUDA device.

    Args:
        engine_path: the ``.engine`` file written by ``segdeploy build``.
        precision: label for reports; default: the facts' precision, else ``"fp16"`` (the looser
            verification thresholds, since an engine without a sidecar says nothing about its precision).
        facts: what the engine loads on and takes when they come from elsewhere than its sidecar (a bundle's
            manifest); default: its sidecar ``ENGINE.json``, if it has one.

    Raises:
        UserInputError: a sidecar that cannot be read or is not a complete segdeploy sidecar.
    """

    runtime = Runtime.TRT
    timing = "cuda_events"

    def __init__(
        self, engine_path: str | Path, precision: Precision | str | None = None, facts: EngineLoadFacts | None = None
    ) -> None:
        self.engine_path = Path(engine_path)
        if facts is None and self.engine_path.is_file():
            sidecar = EngineSidecar.read(self.engine_path)
            facts = None if sidecar is None else sidecar.load_facts()
        self.facts = facts
        super().__init__(precision or (facts.precision if facts is not None else Precision.FP16))
        self._trt: Any = None
        self._runtime: Any = None
        self._cuda_engine: Any = None
        self._context: Any = None
        self._stream: Any = None
        self.io: EngineIO | None = None

    # ------------------------------------------------------------------ contract
    def _activate(self) -> None:
        """Check compatibility, deserialize the engine and create its execution context.

        Raises:
            UserInputError: missing, foreign or corrupt engine.
            MissingDependencyError: no TensorRT or no CUDA GPU.
        """
        if not self.engine_path.is_file():
            raise UserInputError(f"engine {self.engine_path} does not exist")
        trt, gpu = require_tensorrt()
        plan = self.engine_path.read_bytes()
        if self.facts is not None:
            check_engine_compatible(
                self.facts,
                engine_path=self.engine_path,
                engine_sha256=hashlib.sha256(plan).hexdigest(),
                trt_version=str(trt.__version__),
                compute_capability=gpu.compute_capability,
            )
        loaded = load_engine(trt, plan, self.engine_path, has_sidecar=self.facts is not None)
        import torch

        self._trt = trt
        self._runtime, self._cuda_engine, self._context, self.io = loaded
        self.input_spec = _input_spec(self.io, self.facts)
        # A non-default stream: enqueueing on the legacy default stream adds device-wide syncs.
        self._stream = torch.cuda.Stream()

    def _deactivate(self) -> None:
        """Release context, engine and runtime, in that order."""
        self._context = None
        self._cuda_engine = None
        self._runtime = None
        self._stream = None

    def _run(self, batch: np.ndarray, names: Sequence[str] | None) -> list[np.ndarray]:
        """Run one checked batch; returns the main output (float outputs as float32)."""
        import torch

        if names:
            raise UserInputError("a TensorRT engine exposes only its outputs, no intermediate tensors")
        stream = self._require_active()
        with torch.cuda.stream(stream):
            binding = self._stage(batch)
            self._execute()
            out = binding.outputs[0]
            host = (out.float() if out.is_floating_point() else out).cpu()
        stream.synchronize()
        return [host.numpy()]

    def _prepare(self, batch: np.ndarray) -> Callable[[], None]:
        """Stage ``batch`` on the GPU once; the returned step only enqueues and waits (no host copies)."""
        import torch

        stream = self._require_active()
        with torch.cuda.stream(stream):
            binding = self._stage(batch)
        stream.synchronize()

        def step() -> None:
            _keep_alive = binding  # the bound device tensors must outlive every enqueue
            self._execute()
            stream.synchronize()

        return step

    # ------------------------------------------------------------------ timing for the benchmark
    def measure(
        self,
        batch: np.ndarray,
        *,
        warmup: int = 10,
        iters: int | None = None,
        seconds: float | None = None,
        min_iters: int = 10,
        cuda_graph: bool = False,
    ) -> Measurement:
        """GPU compute time per step (CUDA events, like trtexec), with end-to-end times (copies included) beside.

        A ``seconds`` budget becomes an iteration count from a short probe: CUDA-event timing runs a fixed count.
        """
        if iters is None:
            budget = 3.0 if seconds is None else seconds
            probe = self.gpu_compute_ms(batch, warmup=warmup, iters=min_iters, cuda_graph=cuda_graph)
            iters = max(min_iters, int(budget * 1e3 / max(float(np.mean(probe)), 1e-6)))
        compute = self.gpu_compute_ms(batch, warmup=warmup, iters=iters, cuda_graph=cuda_graph)
        end_to_end = self.end_to_end_ms(batch, warmup=warmup, iters=iters)  # copies included, no graph
        return Measurement(compute, "cuda_events", gpu_compute_ms=compute, end_to_end_ms=end_to_end)

    def gpu_compute_ms(
        self, batch: np.ndarray, *, warmup: int = 10, iters: int = 100, cuda_graph: bool = False
    ) -> list[float]:
        """Per-iteration GPU time of the enqueue alone, like trtexec's "GPU Compute Time".

        CUDA events are recorded on the compute stream right before and after the enqueue (or the CUDA
        graph launch); transfers are excluded. At least one warm-up enqueue runs first because the first
        enqueue after a shape change does one-time setup.

        Args:
            batch: float32 NCHW input.
            warmup: untimed enqueues (at least 1 is always run).
            iters: timed iterations.
            cuda_graph: capture the enqueue in a CUDA graph and time graph launches (trtexec 11's default).

        Returns:
            ``iters`` durations in milliseconds.
        """
        import torch

        if iters < 1:
            raise UserInputError(f"bad iteration count {iters}: expected at least 1")
        stream = self._require_active()
        with torch.cuda.stream(stream):
            binding = self._stage(batch)
            for _ in range(max(1, warmup)):
                self._execute()
        stream.synchronize()
        launch: Callable[[], Any] = self._execute
        if cuda_graph:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, stream=stream):
                    self._execute()
            except RuntimeError as exc:
                raise SegdeployError(
                    f"this engine cannot be captured in a CUDA graph ({exc}); time it without CUDA graphs"
                ) from None
            launch = graph.replay
            with torch.cuda.stream(stream):
                launch()  # the first launch of a fresh graph uploads it; keep it out of the timings
            stream.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times: list[float] = []
        with torch.cuda.stream(stream):
            for _ in range(iters):
                start.record(stream)
                launch()
                end.record(stream)
                end.synchronize()
                times.append(float(start.elapsed_time(end)))
        del binding
        return times

    def end_to_end_ms(self, batch: np.ndarray, *, warmup: int = 10, iters: int = 100) -> list[float]:
        """Per-iteration wall time of :meth:`infer`: host-to-device copy, shapes, enqueue, device-to-host copy.

        Returns:
            ``iters`` durations in milliseconds.
        """
        if iters < 1:
            raise UserInputError(f"bad iteration count {iters}: expected at least 1")
        for _ in range(max(0, warmup)):
            self.infer(batch)
        times: list[float] = []
        for _ in range(iters):
            began = time.perf_counter()
            self.infer(batch)
            times.append((time.perf_counter() - began) * 1000.0)
        return times

    # ------------------------------------------------------------------ internals
    def _require_active(self) -> Any:
        if self._context is None or self._stream is None:
            raise SegdeployError("TrtRunner is not active: use it as a context manager (`with TrtRunner(...)`)")
        return self._stream

    def _stage(self, batch: np.ndarray) -> _Binding:
        """Copy ``batch`` to the GPU, set shapes and bind all I/O addresses. Call inside the runner's stream."""
        import torch

        assert self.io is not None
        check_in_profile(batch.shape, self.io.profile.min, self.io.profile.max, self.io.input_name)
        x = torch.from_numpy(batch).to("cuda").to(self.io.input_dtype).contiguous()
        output_shapes = set_shapes(self._context, self.io, tuple(x.shape))
        outputs = [
            torch.empty(shape, dtype=dtype, device="cuda") for shape, (_, dtype) in zip(output_shapes, self.io.outputs)
        ]
        bind_tensors(self._context, self.io, x.data_ptr(), [out.data_ptr() for out in outputs])
        return _Binding(tuple(x.shape), x, outputs)

    def _execute(self) -> None:
        enqueue(self._context, self._stream.cuda_stream, self.engine_path)


# --------------------------------------------------------------------------- the TensorRT calls (no CUDA here)
class LoadedEngine(NamedTuple):
    """What :func:`load_engine` made; the runtime and engine must outlive the context."""

    runtime: Any
    engine: Any
    context: Any
    io: EngineIO


def load_engine(trt: Any, plan: bytes, engine_path: Path, *, has_sidecar: bool) -> LoadedEngine:
    """Deserialize ``plan``, create its execution context and describe its I/O.

    Raises:
        UserInputError: TensorRT cannot load the engine, or its I/O is not one input and some outputs.
        SegdeployError: no execution context (out of GPU memory).
    """
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)  # [RT]
    engine = runtime.deserialize_cuda_engine(plan)  # [RT]: ICudaEngine, or None on failure
    if engine is None:
        why = "the file may be truncated or corrupt" if has_sidecar else "no sidecar says how it was built"
        raise UserInputError(
            f"TensorRT {trt.__version__} could not load {engine_path} ({why}; see "
            f"TensorRT's messages above): {REBUILD_HINT}"
        )
    context = engine.create_execution_context()  # [ENG]
    if context is None:
        raise SegdeployError(f"TensorRT could not create an execution context for {engine_path} (out of GPU memory?)")
    return LoadedEngine(runtime, engine, context, _describe_io(trt, engine, engine_path))


def set_shapes(context: Any, io: EngineIO, input_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Give the context the input shape; return each output's shape, in ``io.outputs`` order.

    Raises:
        UserInputError: TensorRT refuses the shape.
        SegdeployError: TensorRT cannot infer every shape.
    """
    # [CTX] set_input_shape -> bool; infer_shapes -> names it could not infer ([] = all known).
    if not context.set_input_shape(io.input_name, tuple(int(d) for d in input_shape)):
        raise UserInputError(f"TensorRT refused input shape {format_shape(input_shape)} for {io.input_name!r}")
    unresolved = context.infer_shapes()
    if unresolved:
        raise SegdeployError(f"TensorRT could not infer the shapes of {', '.join(unresolved)}")
    return [tuple(int(d) for d in context.get_tensor_shape(name)) for name, _ in io.outputs]  # [CTX]


def bind_tensors(context: Any, io: EngineIO, input_address: int, output_addresses: Sequence[int]) -> None:
    """Bind device addresses to the input and each output (``io.outputs`` order).

    Raises:
        SegdeployError: TensorRT refuses an address.
    """
    names = [io.input_name] + [name for name, _ in io.outputs]
    for name, address in zip(names, [input_address, *output_addresses]):
        # [CTX] set_tensor_address(name, int pointer) -> bool (False: unknown name or misaligned pointer).
        if not context.set_tensor_address(name, int(address)):
            raise SegdeployError(f"TensorRT refused the device address of tensor {name!r}")


def enqueue(context: Any, stream_handle: int, engine_path: Path) -> None:
    """Enqueue one inference on the CUDA stream ``stream_handle``.

    Raises:
        SegdeployError: TensorRT reports a failure.
    """
    # [CTX] execute_async_v3(stream_handle) -> bool; the runner passes its own (non-default) stream.
    if not context.execute_async_v3(int(stream_handle)):
        raise SegdeployError(f"TensorRT failed to run {engine_path} (see TensorRT's messages above)")


def _describe_io(trt: Any, engine: Any, engine_path: Path) -> EngineIO:
    # [ENG] num_io_tensors, get_tensor_name(i), get_tensor_mode(name), get_tensor_dtype(name),
    # get_tensor_profile_shape(name, profile) -> [min, opt, max] (inputs only).
    inputs, outputs = [], []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = (name, _torch_dtype(trt, engine.get_tensor_dtype(name), name))
        (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(entry)
    if len(inputs) != 1 or not outputs:
        raise UserInputError(
            f"{engine_path} has {len(inputs)} inputs and {len(outputs)} outputs; "
            "segdeploy runs engines with one input and at least one output"
        )
    input_name, input_dtype = inputs[0]
    # infer() returns outputs[0]: the segmentation output when the export named it, like the ORT runner.
    main = main_output_index([name for name, _ in outputs])
    outputs.insert(0, outputs.pop(main))
    lo, opt, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(input_name, 0))
    return EngineIO(input_name, input_dtype, tuple(outputs), Profile(lo, opt, hi))  # type: ignore[arg-type]


def _input_spec(io: EngineIO, facts: EngineLoadFacts | None) -> InputSpec:
    """The input check of an engine: its dtype, the layout its ONNX had (from its facts) and its fixed dims."""
    import torch

    layout = facts.input_format.layout if facts is not None else "NCHW"
    dtype = {torch.uint8: np.uint8, torch.float16: np.float32}.get(io.input_dtype, np.float32)
    fixed = {axis: lo for axis, (lo, hi) in enumerate(zip(io.profile.min, io.profile.max)) if lo == hi}
    channels = fixed.pop(layout.index("C"), None)
    return InputSpec(dtype, layout, channels, fixed)


def _torch_dtype(trt: Any, trt_dtype: Any, name: str) -> Any:
    import torch

    # hasattr on TensorRT enums is a safe feature check; members differ between versions.
    pairs = [
        ("FLOAT", torch.float32),
        ("HALF", torch.float16),
        ("BF16", torch.bfloat16),
        ("INT32", torch.int32),
        ("INT64", torch.int64),
        ("INT8", torch.int8),
        ("UINT8", torch.uint8),
        ("BOOL", torch.bool),
    ]
    for member, torch_dtype in pairs:
        if hasattr(trt.DataType, member) and trt_dtype == getattr(trt.DataType, member):
            return torch_dtype
    raise SegdeployError(f"tensor {name!r} has TensorRT type {trt_dtype}, which segdeploy cannot bind")
