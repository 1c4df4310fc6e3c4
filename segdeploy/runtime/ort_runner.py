"""ONNX Runtime runner (CPU provider unless told otherwise)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.errors import MissingDependencyError, UserInputError, first_line
from segdeploy.runtime.base import Runner, check_batch

INPUT_NAME = "input"  # what segdeploy export names the image input
OUTPUT_NAME = "logits"


class OrtRunner(Runner):
    """Run an ONNX model with ONNX Runtime on float32 numpy batches.

    Args:
        path_or_bytes: a ``.onnx`` path or the serialized model.
        precision: label of the model's precision (``"fp32"``/``"fp16"``); an FP16 model with
            float16 I/O gets its input cast and its output cast back to float32.
        providers: ONNX Runtime execution providers; default ``["CPUExecutionProvider"]``.
        threads: ``intra_op_num_threads``; None lets ONNX Runtime decide.

    Raises:
        UserInputError: (on activation) the file is not an ONNX model ONNX Runtime loads, or it
            has no single image input of rank 4.
    """

    engine = "ort"

    def __init__(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        precision: str = "fp32",
        providers: list[str] | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(precision)
        if isinstance(path_or_bytes, (bytes, bytearray)):
            if not path_or_bytes:
                raise UserInputError("the ONNX model bytes are empty")
            self.source: str | bytes = bytes(path_or_bytes)
            self.name = "<bytes>"
        else:
            path = Path(path_or_bytes)
            if not path.is_file():
                raise UserInputError(f"{path} does not exist; expected an ONNX file (.onnx)")
            if path.stat().st_size == 0:
                raise UserInputError(f"{path} is empty, not an ONNX model")
            self.source = str(path)
            self.name = str(path)
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads = threads
        self.session: Any = None
        self.input_name = INPUT_NAME
        self.output_name = OUTPUT_NAME
        self._input_shape: list[Any] = []
        self._io_dtype: type = np.float32

    def activate(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingDependencyError("onnxruntime is not installed: pip install onnxruntime") from None
        unavailable = [p for p in self.providers if p not in ort.get_available_providers()]
        if unavailable:
            raise MissingDependencyError(
                f"ONNX Runtime provider(s) {', '.join(unavailable)} not available here "
                f"(have: {', '.join(ort.get_available_providers())}); for CUDA install onnxruntime-gpu"
            )
        options = ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = int(self.threads)
        try:
            self.session = ort.InferenceSession(self.source, sess_options=options, providers=self.providers)
        except Exception as exc:  # ORT raises InvalidProtobuf, Fail, InvalidGraph... for bad files
            first = first_line(exc)
            raise UserInputError(f"{self.name} is not an ONNX model ONNX Runtime can load: {first}") from None
        self._inspect_io()

    def deactivate(self) -> None:
        self.session = None

    def _inspect_io(self) -> None:
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        if not inputs:
            raise UserInputError(f"{self.name} has no inputs; expected one image input named {INPUT_NAME!r}")
        chosen = next((i for i in inputs if i.name == INPUT_NAME), None)
        if chosen is None and len(inputs) > 1:
            raise UserInputError(
                f"{self.name} has inputs {', '.join(names)}; expected one image input named {INPUT_NAME!r}"
            )
        chosen = chosen or inputs[0]
        if len(chosen.shape) != 4:
            raise UserInputError(
                f"{self.name}: input {chosen.name!r} has rank {len(chosen.shape)}; expected an NCHW image (rank 4)"
            )
        self.input_name = chosen.name
        self._input_shape = list(chosen.shape)
        self._io_dtype = np.float16 if chosen.type == "tensor(float16)" else np.float32
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = OUTPUT_NAME if OUTPUT_NAME in outputs else outputs[0]

    @property
    def input_shape(self) -> list[Any]:
        """The model's input shape as ONNX Runtime reports it (ints for static dims, names for dynamic)."""
        self._ensure_session()
        return self._input_shape

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Float32 ``[N, C, H, W]`` in, float32 logits out."""
        feed = self._feed(batch)
        (out,) = self.session.run([self.output_name], {self.input_name: feed})
        return np.asarray(out, dtype=np.float32)

    def prepare(self, batch: np.ndarray) -> Callable[[], None]:
        feed = self._feed(batch)
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, feed)
        binding.bind_output(self.output_name)
        session = self.session

        def step() -> None:
            session.run_with_iobinding(binding)

        return step

    def _ensure_session(self) -> None:
        if self.session is None:  # allow use without ``with``: activate on first call
            self.activate()
            self.active = True

    def _feed(self, batch: np.ndarray) -> np.ndarray:
        self._ensure_session()
        _, channels, height, width = self._input_shape
        check_batch(batch, channels if isinstance(channels, int) else None, (height, width))
        return np.ascontiguousarray(batch, dtype=self._io_dtype)
