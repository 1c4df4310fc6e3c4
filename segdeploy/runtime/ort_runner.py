"""ONNX Runtime runner (CPU provider unless told otherwise)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.artifact import InputFormat, Precision, Runtime, parse_choice
from segdeploy.errors import MissingDependencyError, UserInputError, first_line
from segdeploy.runtime.base import InputSpec, Runner, main_output_index

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


class OrtRunner(Runner):
    """Run an ONNX model with ONNX Runtime.

    Args:
        path_or_bytes: a ``.onnx`` path or the serialized model.
        precision: the model's precision (``fp32``, ``fp16``, ``int8``...); an FP16 model with float16
            I/O gets its float32 input cast and its output cast back to float32.
        providers: ONNX Runtime execution providers; default ``["CPUExecutionProvider"]``.
        threads: ``intra_op_num_threads``; None lets ONNX Runtime decide.

    Raises:
        UserInputError: (on activation) not an ONNX model ONNX Runtime loads, or no single rank-4 image input.
    """

    runtime = Runtime.ORT

    def __init__(
        self,
        path_or_bytes: str | os.PathLike[str] | bytes,
        precision: Precision | str = Precision.FP32,
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
        self.input_name = ""
        self.output_name = ""
        self._exposed: tuple[str, ...] = ()

    def expose(self, names: Sequence[str]) -> None:
        """Make intermediate values ``names`` readable with ``infer_outputs`` (before activation: one session)."""
        names = tuple(names)
        if names != self._exposed:
            self.deactivate()
            self._exposed = names

    def _activate(self) -> None:
        self.session = self._open(self._exposed)
        self._inspect_io()

    def _deactivate(self) -> None:
        self.session = None

    def _open(self, extra_outputs: tuple[str, ...]) -> Any:
        """A session of the model, with ``extra_outputs`` (intermediate value names) added as graph outputs."""
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
        source = self.source if not extra_outputs else _with_outputs(self.source, extra_outputs)
        try:
            return ort.InferenceSession(source, sess_options=options, providers=self.providers)
        except Exception as exc:  # ORT raises InvalidProtobuf, Fail, InvalidGraph... for bad files
            raise UserInputError(f"{self.name} is not an ONNX model ONNX Runtime can load: {first_line(exc)}") from None

    def _inspect_io(self) -> None:
        from segdeploy.artifact import INPUT_NAME

        inputs = self.session.get_inputs()
        if not inputs:
            raise UserInputError(f"{self.name} has no inputs; expected one image input named {INPUT_NAME!r}")
        chosen = next((i for i in inputs if i.name == INPUT_NAME), None)
        if chosen is None and len(inputs) > 1:
            names = ", ".join(i.name for i in inputs)
            raise UserInputError(f"{self.name} has inputs {names}; expected one image input named {INPUT_NAME!r}")
        chosen = chosen or inputs[0]
        if len(chosen.shape) != 4:
            raise UserInputError(
                f"{self.name}: input {chosen.name!r} has rank {len(chosen.shape)}; expected an image (rank 4)"
            )
        dtype = _NUMPY_TYPES.get(chosen.type)
        if dtype is None:
            raise UserInputError(
                f"{self.name}: input {chosen.name!r} is {chosen.type}; expected float, float16 or uint8"
            )
        self.input_name = chosen.name
        layout = self._layout(dtype)
        fixed = {axis: int(d) for axis, d in enumerate(chosen.shape) if isinstance(d, int) and d > 0}
        channels = fixed.pop(layout.index("C"), None)
        self.input_spec = InputSpec(dtype, layout, channels, fixed, self._size_rule(layout, fixed))
        outputs = [o.name for o in self.session.get_outputs()]
        self.output_name = outputs[main_output_index(outputs)]

    def _layout(self, dtype: Any) -> str:
        """NHWC only for uint8 files whose segdeploy metadata says so."""
        if dtype != np.uint8:
            return "NCHW"
        meta = self.session.get_modelmeta().custom_metadata_map
        return parse_choice(InputFormat, meta.get("input_format", "uint8-nchw"), "input_format").layout

    def _size_rule(self, layout: str, fixed: dict[int, int]) -> tuple[int, int, int | None] | None:
        """The heights and widths a segdeploy file's metadata says it takes (None: a static or foreign file)."""
        meta = self.session.get_modelmeta().custom_metadata_map
        if "size_multiple" not in meta or layout.index("H") in fixed or layout.index("W") in fixed:
            return None
        try:
            maximum = meta.get("max_size", "").strip()
            return int(meta["size_multiple"] or 1), int(meta.get("min_size") or 1), int(maximum) if maximum else None
        except ValueError:
            return None  # unreadable metadata: ONNX Runtime's own checks still apply

    @property
    def input_shape(self) -> list[Any]:
        """The model's input shape as ONNX Runtime reports it (ints for static dims, names for dynamic)."""
        self.activate()
        return list(self.session.get_inputs()[0].shape)

    def _run(self, batch: np.ndarray, names: Sequence[str] | None) -> list[np.ndarray]:
        missing = [name for name in names or () if name not in self._exposed]
        if missing:  # reopen once with them: every later run reads them from the same session
            self.expose((*self._exposed, *missing))
            self.activate()
        outs = self.session.run([self.output_name, *(names or ())], {self.input_name: batch})
        return [np.asarray(o, dtype=np.float32) if o.dtype == np.float16 else np.asarray(o) for o in outs]

    def _prepare(self, batch: np.ndarray) -> Callable[[], None]:
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, batch)
        binding.bind_output(self.output_name)
        session = self.session

        def step() -> None:
            session.run_with_iobinding(binding)

        return step


def _with_outputs(source: str | bytes, names: Sequence[str]) -> bytes:
    """The serialized model with intermediate values ``names`` added as graph outputs (types left to ORT)."""
    import onnx

    from segdeploy.artifact import load_onnx

    model = load_onnx(source) if isinstance(source, str) else onnx.load_from_string(source)
    produced = {out for node in model.graph.node for out in node.output} | {i.name for i in model.graph.input}
    missing = [n for n in names if n not in produced]
    if missing:
        raise UserInputError(f"the ONNX model has no value named {', '.join(missing)}")
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    return model.SerializeToString()
