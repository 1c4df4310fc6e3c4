"""Shared by the C++ runtime tests: building the program, running it, and the Python reference it must equal.

The Python reference is segdeploy's own frame pipeline (``segdeploy.frames.FramePipeline``, from the manifest's
``pipeline`` or the model's metadata) with Python's ONNX Runtime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CPP = ROOT / "cpp"
BUILD_ARGS = "-DSEGDEPLOY_BUILD_TESTS=ON -DSEGDEPLOY_WERROR=ON"
CUDA_WHEELS = {  # CUDA 12.9's runtime headers, and crt/host_defines.h that cuda_runtime_api.h includes
    "nvidia-cuda-runtime-cu12": ("12.9.79", "nvidia/cuda_runtime/include/"),
    "nvidia-cuda-nvcc-cu12": ("12.9.86", "nvidia/cuda_nvcc/include/crt/"),
}


def build(build_dir: Path, *cmake_args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``cpp/build.sh`` into ``build_dir`` (incremental); skips the test when prerequisites are missing (exit 3)."""
    if shutil.which("bash") is None:
        pytest.skip("the C++ build needs bash")
    full_env = {
        **os.environ,
        "PYTHON": sys.executable,  # build.sh takes ONNX Runtime's library from this wheel
        "SEGDEPLOY_CPP_BUILD_DIR": str(build_dir),
        "SEGDEPLOY_CMAKE_ARGS": " ".join([BUILD_ARGS, *cmake_args]),
        **(env or {}),
    }
    proc = subprocess.run(
        ["bash", str(CPP / "build.sh")], capture_output=True, text=True, env=full_env, timeout=3600, check=False
    )
    if proc.returncode == 3:
        pytest.skip(f"C++ build prerequisites missing: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"cpp/build.sh failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def ort_program() -> Path:
    """cpp/build/segdeploy_infer (ONNX Runtime only), built or brought up to date."""
    build(CPP / "build", "-DSEGDEPLOY_WITH_TENSORRT=OFF")
    return CPP / "build" / "segdeploy_infer"


def run(program: Path, *args: object, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(program), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def infer(program: Path, *args: object, **kwargs) -> subprocess.CompletedProcess:
    """segdeploy_infer with one ONNX Runtime thread (the machine is shared)."""
    return run(program, *args, "--threads", "1", **kwargs)


def assert_one_error_line(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# --------------------------------------------------------------------------- the Python reference
def pipeline_of(bundle: Path):
    """The bundle's FramePipeline: its manifest's ``pipeline``, or the model's metadata."""
    from segdeploy.artifact import read_metadata
    from segdeploy.frames import FramePipeline

    manifest = json.loads((bundle / "segdeploy.json").read_text())
    if manifest.get("pipeline"):
        return FramePipeline.from_dict(manifest["pipeline"])
    return FramePipeline.from_metadata(read_metadata(bundle / "model.onnx"))


def python_masks(bundle: Path, frames_bgr: list[np.ndarray], pipeline=None) -> list[np.ndarray]:
    """Each frame's class map at its size, by FramePipeline and ONNX Runtime (one frame per run)."""
    import onnxruntime as ort

    pipeline = pipeline or pipeline_of(bundle)
    manifest = json.loads((bundle / "segdeploy.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(bundle / "model.onnx"), options, providers=["CPUExecutionProvider"])
    masks = []
    for frame in frames_bgr:
        x = pipeline.to_input([frame], frame_color="bgr")
        if pipeline.fixed_batch:
            x = np.ascontiguousarray(np.repeat(x, pipeline.fixed_batch, axis=0))
        out = session.run([manifest["output"]["name"]], {manifest["input"]["name"]: x})[0]
        masks.append(pipeline.restore(pipeline.to_classmap(out)[0], frame.shape[:2]))
    return masks


def palette_to_classes(image_bgr: np.ndarray, palette: list[list[int]]) -> np.ndarray:
    """Class indices of a color mask painted with ``palette`` (RGB); -1 where no color matches."""
    rgb = image_bgr[..., ::-1].astype(np.int64)
    out = np.full(rgb.shape[:2], -1, dtype=np.int64)
    for index, color in enumerate(palette):
        out[np.all(rgb == np.asarray(color), axis=-1)] = index
    return out


# --------------------------------------------------------------------------- CUDA headers from PyPI wheels
def cache_dir() -> Path:
    """``$SEGDEPLOY_TEST_CACHE`` or ``~/.cache/segdeploy/test-trt`` (shared with the bindings tests)."""
    env = os.environ.get("SEGDEPLOY_TEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "segdeploy" / "test-trt"


def cuda_headers() -> list[Path]:
    """The include directories of CUDA 12.9's runtime API, downloaded once from PyPI into the test cache."""
    root = cache_dir() / "cuda-12.9-headers"
    include = root / "include"
    if (root / ".complete").exists():
        return [include]
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for dist, (version, prefix) in CUDA_WHEELS.items():
        if not list(wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl")):
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
                 f"{dist}=={version}", "-d", str(wheels)],
                capture_output=True, text=True, timeout=1800, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                pytest.skip(f"cannot download {dist}=={version}: {proc.stderr.strip().splitlines()[-1:]}")
        (wheel,) = wheels.glob(f"{dist.replace('-', '_')}-{version}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            for name in archive.namelist():
                if name.startswith(prefix) and not name.endswith("/"):
                    relative = name.split("/include/", 1)[1]
                    target = include / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(name))
    (root / ".complete").write_text("ok\n")
    return [include]
