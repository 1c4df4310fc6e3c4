"""The errors segdeploy raises on purpose.

The CLI turns each into one line on stderr and the exit code below; anything
else is a bug and is reported as an internal error.
"""

from __future__ import annotations


class SegdeployError(Exception):
    """Base class: a problem segdeploy can explain in one line."""

    exit_code = 1


class UserInputError(SegdeployError):
    """Bad input: unknown name, bad shape or opset, unreadable or invalid file."""

    exit_code = 2


class CheckpointError(UserInputError):
    """A checkpoint that is missing, corrupt, untrusted or does not fit the model."""


class ExportError(SegdeployError):
    """The model could not be turned into a valid ONNX file."""

    exit_code = 3


class VerificationError(SegdeployError):
    """A runtime disagreed with PyTorch beyond the thresholds.

    A failed export raises the subclass ``segdeploy.pipeline.ExportVerificationError``, whose ``report``
    and ``result`` attributes hold the verification report and the would-be export result.
    """

    exit_code = 4


class MissingDependencyError(SegdeployError):
    """An optional part is absent: TensorRT, a CUDA GPU, onnxruntime-gpu, matplotlib."""

    exit_code = 5


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


EXIT_CODES_HELP = (
    "Exit codes: 0 ok, 1 error, 2 bad input, 3 export failed, "
    "4 verification failed, 5 missing optional dependency (TensorRT, CUDA GPU, onnxruntime-gpu, matplotlib)."
)
