"""A real ``tritonserver`` for tests: how far Triton gets loading one model directory.

The ``nvidia-pytriton`` wheel ships Triton Inference Server's own binary (``pytriton/tritonserver``, with
the libraries it links in ``nvidia_pytriton.libs``). It has only the Python backend, and it runs on a
machine without a GPU. So it cannot load a bundle's ``onnxruntime`` or ``tensorrt_plan`` model, but it
does everything before the backend: it reads ``config.pbtxt`` (text proto), fills the defaults and
validates the config when it polls the repository, applies the version policy, and only then looks for
the backend library. A model whose load fails with nothing but "unable to find backend library" has
passed every config check Triton makes itself; a config Triton refuses fails earlier with its reason.

The wheel is downloaded once into the same cache as the TensorRT bindings (``$SEGDEPLOY_TEST_CACHE`` or
``~/.cache/segdeploy/test-trt``) and only the server and its libraries are extracted.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from trt_bindings import cache_root, download_wheel, last_line

PYTRITON_VERSION = "0.7.0"
TRITON_VERSION = "2.51.0"
"""The Triton release inside ``nvidia-pytriton==PYTRITON_VERSION`` (its ``server_version``)."""
DIST = "nvidia-pytriton"
# What the binary needs: itself, its backends directory, and the libraries its RUNPATH points to.
EXTRACT = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")
BACKEND_MISSING = "unable to find backend library for backend"


class ServerUnavailable(Exception):
    """No ``tritonserver`` can be had here (no download, no Linux x86-64); the message says why."""


@dataclass(frozen=True)
class Verdict:
    """How far Triton got loading one model.

    ``reaches_backend``: Triton accepted the config and the repository and stopped only because it has no
    library for the model's backend. Otherwise ``message`` is Triton's reason for refusing the model.
    """

    reaches_backend: bool
    message: str
    log: str


def server_dir(root: Path | None = None) -> Path:
    """``pytriton/tritonserver`` of ``nvidia-pytriton==PYTRITON_VERSION``, downloaded and extracted once.

    Raises:
        ServerUnavailable: not Linux x86-64, or pip cannot download the wheel; the message says which.
    """
    if not sys.platform.startswith("linux") or os.uname().machine != "x86_64":
        raise ServerUnavailable(f"{DIST} ships tritonserver for Linux x86-64 only, not {sys.platform} {os.uname()}")
    work = (root or cache_root()) / f"pytriton-{PYTRITON_VERSION}"
    unpacked = work / "server"
    binary = unpacked / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not binary.is_file():
        work.mkdir(parents=True, exist_ok=True)
        _extract(download_wheel(f"{DIST}=={PYTRITON_VERSION}", work, ServerUnavailable, timeout=600), unpacked)
    return binary.parent.parent


def _extract(wheel: Path, unpacked: Path) -> None:
    tmp = Path(tempfile.mkdtemp(dir=unpacked.parent))
    try:
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.infolist():
                if member.is_dir() or not member.filename.startswith(EXTRACT):
                    continue
                target = Path(archive.extract(member, tmp))
                # zipfile drops permissions; the wheel records them (the server binary is executable)
                target.chmod((member.external_attr >> 16) & 0o755 or 0o644)
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ServerUnavailable(f"cannot extract tritonserver from {wheel.name}: {exc}") from None
    shutil.rmtree(unpacked, ignore_errors=True)
    os.replace(tmp, unpacked)


# An error line of Triton's log: E1202 14:12:26.857073 18562 model_lifecycle.cc:642] "message"
_ERROR_LINE = re.compile(r'^E\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] "?(.*?)"?$')


def load_model(model_dir: Path, server: Path, timeout: float = 60.0) -> Verdict:
    """Start ``tritonserver`` on ``model_dir``'s repository, loading only that model, and say how far it got.

    No endpoint is opened (HTTP, gRPC and metrics are off: the verdict comes from the log), so nothing
    listens on a port. ``--exit-on-error`` makes the server exit once the model fails; a model that loaded
    would leave it running, so it is stopped at ``timeout`` and reported as not reaching the backend, with
    the log to say why.

    Args:
        model_dir: ``REPO/NAME`` holding ``config.pbtxt`` and its version directories.
        server: the ``tritonserver`` directory from :func:`server_dir`.
        timeout: seconds before the server is stopped.
    """
    command = [
        str(server / "bin" / "tritonserver"),
        f"--model-repository={model_dir.parent}",
        "--model-control-mode=explicit",
        f"--load-model={model_dir.name}",
        f"--backend-directory={server / 'backends'}",
        "--exit-on-error=true",
        "--disable-auto-complete-config",
        "--allow-http=false",
        "--allow-grpc=false",
        "--allow-metrics=false",
    ]
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        log = (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        return Verdict(False, f"tritonserver still running after {timeout:.0f} s", log)
    log = run.stdout + run.stderr
    errors = [m.group(1) for line in log.splitlines() if (m := _ERROR_LINE.match(line))]
    # Without a GPU Triton logs that its CUDA helper is not initialized; that is not about the model.
    errors = [e for e in errors if "CudaDriverHelper" not in e]
    message = errors[0] if errors else last_line(log)
    reaches = run.returncode != 0 and all(BACKEND_MISSING in e for e in errors) and BACKEND_MISSING in message
    return Verdict(reaches, message, log)
