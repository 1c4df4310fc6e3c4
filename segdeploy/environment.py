"""What this machine offers segdeploy: library versions, CPU, CUDA GPU, usable engines.

Every probe imports its library lazily and tolerates its absence, so
``segdeploy doctor`` works on a bare CPU box and the bench report can record
the environment it measured in.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from segdeploy._version import __version__
from segdeploy.errors import first_line

# One line that says how to get TensorRT; build, the runner and doctor all use it.
TENSORRT_INSTALL_HINT = (
    "install TensorRT 10.3 or newer on a machine with an NVIDIA GPU: `pip install segdeploy[gpu]` "
    "(or `pip install tensorrt`) plus a CUDA build of PyTorch; on Jetson, JetPack 6 ships TensorRT 10.3"
)


@dataclass(frozen=True)
class GpuInfo:
    """The CUDA device segdeploy uses (device 0).

    Attributes:
        name: marketing name, e.g. ``"NVIDIA H100 80GB HBM3"``.
        compute_capability: ``"major.minor"``, e.g. ``"9.0"``; TensorRT engines are tied to it.
        memory_gb: total device memory in GiB.
    """

    name: str
    compute_capability: str
    memory_gb: float


def cuda_device() -> GpuInfo | None:
    """Return device 0 as PyTorch sees it, or None without a usable CUDA GPU."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return GpuInfo(
            name=str(props.name),
            compute_capability=f"{props.major}.{props.minor}",
            memory_gb=round(props.total_memory / 2**30, 1),
        )
    except Exception:  # a broken driver must not break doctor
        return None


def no_gpu_reason() -> str:
    """Say why PyTorch sees no CUDA GPU, in a few words."""
    try:
        import torch
    except Exception:
        return "PyTorch is not importable"
    if torch.version.cuda is None:
        return f"no CUDA GPU: PyTorch {torch.__version__} is a CPU-only build"
    return "no CUDA GPU is visible to PyTorch (driver missing or CUDA_VISIBLE_DEVICES empty?)"


def tensorrt_status() -> tuple[str | None, str | None]:
    """Return ``(version, None)`` when TensorRT imports, else ``(None, reason)``."""
    try:
        trt = importlib.import_module("tensorrt")
    except ModuleNotFoundError:
        return None, "TensorRT is not installed"
    except Exception as exc:  # installed but its shared libraries do not load
        return None, f"TensorRT is installed but does not load ({first_line(exc)})"
    return str(getattr(trt, "__version__", "unknown")), None


def collect_environment() -> dict[str, Any]:
    """Describe this machine for ``doctor`` and for benchmark reports.

    Returns:
        A JSON-serialisable dict: segdeploy, python, platform, cpu (model, cores),
        torch, onnx, onnxruntime, onnxruntime_providers, onnxsim, tensorrt,
        tensorrt_error, cuda (available, torch_cuda, gpu, compute_capability,
        memory_gb, driver, reason), matplotlib. Absent libraries are None.
    """
    trt_version, trt_error = tensorrt_status()
    return {
        "segdeploy": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": {"model": _cpu_model(), "cores": os.cpu_count()},
        "torch": _module_version("torch"),
        "onnx": _module_version("onnx"),
        "onnxruntime": _module_version("onnxruntime"),
        "onnxruntime_providers": _ort_providers(),
        "onnxsim": _module_version("onnxsim"),
        "tensorrt": trt_version,
        "tensorrt_error": trt_error,
        "cuda": _cuda_summary(),
        "matplotlib": _module_version("matplotlib"),
    }


def available_engines(env: dict[str, Any]) -> dict[str, str]:
    """Which runners segdeploy can use here, each ``"yes ..."`` or ``"no: reason"``.

    Args:
        env: the result of :func:`collect_environment`.

    Returns:
        ``{"torch": ..., "ort": ..., "trt": ...}``.
    """
    cuda = env.get("cuda") or {}
    engines: dict[str, str] = {}
    if env.get("torch"):
        engines["torch"] = "yes (cpu" + (f", cuda: {cuda['gpu']})" if cuda.get("available") else ")")
    else:
        engines["torch"] = "no: PyTorch is not importable"
    if env.get("onnxruntime"):
        providers = env.get("onnxruntime_providers") or []
        engines["ort"] = "yes (" + (", ".join(providers) or "no providers") + ")"
    else:
        engines["ort"] = "no: onnxruntime is not importable (`pip install onnxruntime`)"
    problems = [r for r in (env.get("tensorrt_error"), None if cuda.get("available") else cuda.get("reason")) if r]
    if problems:
        engines["trt"] = "no: " + "; ".join(problems) + f" ({TENSORRT_INSTALL_HINT})"
    else:
        engines["trt"] = (
            f"yes (TensorRT {env['tensorrt']} on {cuda.get('gpu')}, compute {cuda.get('compute_capability')})"
        )
    return engines


def _module_version(name: str) -> str | None:
    # The installed distribution's metadata avoids importing heavy packages (onnxsim pulls in torch);
    # fall back to importing for packages installed without metadata (JetPack's apt packages).
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        module = importlib.import_module(name)
    except Exception:
        return None
    return str(getattr(module, "__version__", "unknown"))


def _ort_providers() -> list[str]:
    try:
        import onnxruntime

        return list(onnxruntime.get_available_providers())
    except Exception:
        return []


def _cpu_model() -> str:
    # platform.processor() is empty or just "x86_64" on most Linux systems.
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _cuda_summary() -> dict[str, Any]:
    gpu = cuda_device()
    torch_cuda = None
    try:
        import torch

        torch_cuda = torch.version.cuda
    except Exception:
        pass
    if gpu is None:
        return {"available": False, "torch_cuda": torch_cuda, "reason": no_gpu_reason()}
    return {
        "available": True,
        "torch_cuda": torch_cuda,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "memory_gb": gpu.memory_gb,
        "driver": _nvidia_driver_version(),
    }


def _nvidia_driver_version() -> str | None:
    # PyTorch exposes the CUDA runtime version but not the driver's; nvidia-smi has it.
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run(
            [smi, "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None
