"""The TensorRT backend of the C++ runtime without a GPU (heavy tier).

For each vendored TensorRT header set (10.3, 10.16, 11.1; cpp/third_party/tensorrt) the whole program is built
with ``-Wall -Wextra -Werror`` and the TensorRT backend, against CUDA 12.9's runtime headers from PyPI wheels
(downloaded once into the test cache) and fake libnvinfer / libnvinfer_plugin / libcudart built from the same
headers (cpp/tests/fake_tensorrt). The real inline TensorRT classes then run against the fake's implementation
objects: shapes and profiles, refusals, stream and buffer lifetimes, destruction order, errors logged during a
call, vectorized and half outputs, setTensorAddress failures, CUDA's error reasons, exact versions and the golden
tolerances per precision. The fake logs each call; ``VIOLATION`` and ``LEAK`` lines are what the real library
forbids or what was never released.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from cpp_support import CPP, assert_one_error_line, build, cuda_headers, infer, pipeline_of, run

from segdeploy.bundle import write_bundle
from segdeploy.pipeline import IOFormat, export_onnx

pytestmark = pytest.mark.slow

VERSIONS = ("10.3.0.26", "10.16.0.72", "11.1.0.106")
HEADERS = CPP / "third_party" / "tensorrt"
# Dyadic weights: every score of uint8 pixels is exact in float32, whatever order the sums run in.
WEIGHTS = [[1 / 64, -1 / 128, 0.0], [-1 / 128, 1 / 64, 0.0], [0.0, -1 / 128, 1 / 64], [1 / 256, 1 / 256, 1 / 256]]
BIAS = [0.0, 0.125, -0.125, -0.5]


# --------------------------------------------------------------------------- builds
def _fake(version: str) -> Path:
    """The fake TensorRT root and CUDA runtime for one header set."""
    out = CPP / "build" / "tensorrt" / version / "fake"
    include = ";".join(str(p) for p in cuda_headers())
    for cmd in (
        ["cmake", "-S", str(CPP / "tests" / "fake_tensorrt"), "-B", str(out),
         f"-DTRT_INCLUDE_DIR={HEADERS / version / 'include'}", f"-DCUDA_INCLUDE_DIRS={include}"],
        ["cmake", "--build", str(out), "--parallel", "2"],
    ):  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def _cmake_args(fake: Path) -> list[str]:
    include = ";".join(str(p) for p in cuda_headers())
    return [
        f"-DTENSORRT_ROOT={fake / 'root'}",
        f"-DSEGDEPLOY_CUDART_INCLUDE_DIRS={include}",
        f"-DSEGDEPLOY_CUDART_LIBRARY={fake / 'cuda' / 'lib' / 'libcudart.so'}",
    ]


@pytest.fixture(scope="module", params=VERSIONS)
def trt(request) -> dict:
    """segdeploy_infer and segdeploy_alloc_test built with the TensorRT backend of one header set."""
    version = request.param
    fake = _fake(version)
    build_dir = CPP / "build" / "tensorrt" / version / "program"
    build(build_dir, *_cmake_args(fake))
    return {"version": version, "infer": build_dir / "segdeploy_infer", "alloc": build_dir / "segdeploy_alloc_test",
            "fake": fake, "build": build_dir}  # fmt: skip


def test_tensorrt_backend_compiles_with_werror_and_reports_its_version(trt):
    # build() ran with -DSEGDEPLOY_WERROR=ON: any warning in segdeploy's sources would have failed it
    out = run(trt["infer"], "--version").stdout
    assert f"TensorRT {trt['version']}" in out, out


# --------------------------------------------------------------------------- bundles with fake plans
@pytest.fixture(scope="module")
def onnx_bundles(tmp_path_factory) -> dict[str, Path]:
    """uint8 NHWC RGB bundles (the fake plan replaces the model): 4-class logits, and a class map."""
    import torch
    from torch import nn

    root = tmp_path_factory.mktemp("trt_bundles")
    out = {}
    for kind in ("logits", "classmap"):
        torch.manual_seed(0)
        path = root / f"{kind}.onnx"
        export_onnx(nn.Conv2d(3, 4, 1).eval(), path, input_shape=(2, 3, 32, 48), opset=17,
                    io=IOFormat(input_format="uint8-nhwc", output_kind=kind))  # fmt: skip
        out[kind] = write_bundle(path, root / kind, name=kind)
    return out


def _plan(kind: str, **changes) -> dict:
    main = {"name": kind, "role": "scores" if kind == "logits" else "classmap",
            "dtype": "float32" if kind == "logits" else "int32"}  # fmt: skip
    plan = {
        "input": {"name": "input", "dtype": "uint8", "layout": "NHWC", "shape": [-1, -1, -1, 3]},
        "profiles": [{"min": [1, 8, 8, 3], "opt": [1, 32, 48, 3], "max": [4, 96, 96, 3]}],
        "outputs": [main],
        "weights": WEIGHTS,
        "bias": BIAS,
    }
    for key, value in changes.items():
        if key == "main":
            main.update(value)
        else:
            plan[key] = value
    return plan


def _bundle(onnx_bundles, tmp_path: Path, trt: dict, kind: str = "logits", engine: dict | None = None, **plan):
    bundle = Path(shutil.copytree(onnx_bundles[kind], tmp_path / "bundle"))
    (bundle / "model.plan").write_text(json.dumps(_plan(kind, **plan)))
    manifest = json.loads((bundle / "segdeploy.json").read_text())
    manifest["engine"] = {"file": "model.plan", "tensorrt_version": trt["version"], "gpu_name": "Fake GPU",
                          "compute_capability": "8.9", "precision": "fp32", **(engine or {})}  # fmt: skip
    (bundle / "segdeploy.json").write_text(json.dumps(manifest))
    return bundle


def _trt(trt: dict, tmp_path: Path, *args: object, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list]:
    log = tmp_path / "fake.log"
    log.unlink(missing_ok=True)
    proc = infer(trt["infer"], *args, "--backend", "trt", env={"FAKE_TRT_LOG": str(log), **(env or {})})
    events = log.read_text().splitlines() if log.exists() else []
    assert not [e for e in events if e.startswith(("VIOLATION", "LEAK"))], events
    return proc, events


def _reference(x: np.ndarray, stride: int = 1, half: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The fake model on an NHWC uint8 input: scores (N, K, h, w) (rounded to float16 for a half output, as the
    plan stores them) and the first-max class map."""
    scores = np.einsum("nhwc,kc->nkhw", x.astype(np.float32), np.float32(WEIGHTS)) + np.float32(BIAS)[:, None, None]
    scores = scores[:, :, ::stride, ::stride]
    if half:
        scores = scores.astype(np.float16).astype(np.float32)
    return scores, scores.argmax(axis=1)


def _frame(tmp_path: Path, size=(45, 67), seed=0) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (*size, 3), dtype=np.uint8), (7, 7), 3)
    path = tmp_path / f"frame{seed}.png"
    cv2.imwrite(str(path), frame)
    return path, frame


# --------------------------------------------------------------------------- the code path, end to end
@pytest.mark.parametrize(
    ("main", "aux", "stride"),
    [
        ({}, None, 1),
        ({"dtype": "half", "format": "chw4"}, {"name": "aux", "role": "aux", "dtype": "half", "format": "hwc8"}, 2),
        ({"format": "chw32"}, {"name": "aux", "role": "aux", "dtype": "float32", "format": "chw16"}, 1),
        ({"dtype": "half", "format": "hwc16"}, None, 1),
    ],
)
def test_masks_equal_the_reference_for_linear_vectorized_and_half_outputs(
    trt, onnx_bundles, tmp_path, main, aux, stride
):
    outputs = [{"name": "logits", "role": "scores", "dtype": "float32", **main}, *([aux] if aux else [])]
    bundle = _bundle(onnx_bundles, tmp_path, trt, outputs=outputs, stride=stride)
    path, frame = _frame(tmp_path)
    proc, events = _trt(trt, tmp_path, bundle, path, "--raw", tmp_path / "raw.png", "--dump-input", tmp_path / "x.npy")
    assert proc.returncode == 0, proc.stderr
    x = np.load(tmp_path / "x.npy")
    _, classes = _reference(x, stride, half=main.get("dtype") == "half")
    expected = pipeline_of(bundle).restore(classes[0].astype(np.int32), frame.shape[:2])
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "raw.png"), -1), expected)
    assert len(np.unique(expected)) > 1


def test_classmap_outputs_of_each_integer_type_are_read(trt, onnx_bundles, tmp_path):
    path, frame = _frame(tmp_path)
    masks = []
    for dtype in ("int32", "int64", "uint8"):
        sub = tmp_path / dtype
        sub.mkdir()
        bundle = _bundle(onnx_bundles, sub, trt, kind="classmap", main={"dtype": dtype})
        proc, _ = _trt(trt, sub, bundle, path, "--raw", sub / "raw.png")
        assert proc.returncode == 0, proc.stderr
        masks.append(cv2.imread(str(sub / "raw.png"), -1))
    assert all(np.array_equal(masks[0], m) for m in masks) and len(np.unique(masks[0])) > 1


def test_a_batch_runs_once_through_the_batch_dimension_and_buffers_are_bound_once(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(8):
        _frame(frames, seed=i)
    proc, events = _trt(trt, tmp_path, bundle, frames, "--raw", f"{tmp_path}/b4/", "--batch", 4)
    assert proc.returncode == 0, proc.stderr
    assert sum(e.startswith("enqueueV3") for e in events) == 2  # 8 frames, 2 runs of 4
    assert sum(e.startswith("setInputShape") for e in events) == 1
    assert sum(e.startswith("setTensorAddress") for e in events) == 2  # input and output, once
    proc, _ = _trt(trt, tmp_path, bundle, frames, "--raw", f"{tmp_path}/b1/")
    for i in range(8):
        one, four = (cv2.imread(str(tmp_path / d / f"frame{i}.png"), -1) for d in ("b1", "b4"))
        np.testing.assert_array_equal(one, four)


def test_frames_beyond_the_profile_run_at_the_nearest_size_inside_it(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt)
    path, _ = _frame(tmp_path, size=(150, 200))
    proc, events = _trt(trt, tmp_path, bundle, path, "--raw", tmp_path / "raw.png")
    assert proc.returncode == 0, proc.stderr
    assert "model ran at 96x96" in proc.stdout
    assert cv2.imread(str(tmp_path / "raw.png"), -1).shape == (150, 200)


@pytest.mark.parametrize(
    ("profiles", "shape", "contexts"),
    [
        ([{"min": [1, 8, 8, 3], "opt": [1, 32, 48, 3], "max": [4, 96, 96, 3]}], [-1, -1, -1, 3], 1),
        ([{"min": [1, 8, 8, 3], "opt": [1, 32, 48, 3], "max": [4, 96, 96, 3]}] * 2, [-1, -1, -1, 3], 2),
        ([], [1, 45, 67, 3], 2),
    ],
)
def test_two_contexts_run_concurrently_only_where_the_plan_allows(
    trt, onnx_bundles, tmp_path, profiles, shape, contexts
):
    """A dynamic plan needs a separate profile per concurrently used context (the fake flags a shared one)."""
    bundle = _bundle(onnx_bundles, tmp_path, trt, profiles=profiles, input={"name": "input", "dtype": "uint8",
                     "layout": "NHWC", "shape": shape})  # fmt: skip
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(6):
        _frame(frames, seed=i)
    proc, events = _trt(trt, tmp_path, bundle, frames, "--raw", f"{tmp_path}/raw/")
    assert proc.returncode == 0, proc.stderr
    used = {e.split()[1] for e in events if e.startswith("enqueueV3")}
    assert len(used) == contexts, events
    assert sum(e.startswith("setOptimizationProfileAsync 1") for e in events) == (1 if len(profiles) == 2 else 0)


# --------------------------------------------------------------------------- lifetimes
def _order(events: list[str], *prefixes: str) -> list[int]:
    return [next(i for i, e in enumerate(events) if e.startswith(p)) for p in prefixes]


def test_objects_are_destroyed_in_reverse_order_and_nothing_leaks(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt)
    path, _ = _frame(tmp_path)
    proc, events = _trt(trt, tmp_path, bundle, path, "--raw", tmp_path / "raw.png")  # asserts no VIOLATION/LEAK
    assert proc.returncode == 0, proc.stderr
    plugin, runtime, engine_made = _order(events, "initLibNvInferPlugins", "createInferRuntime_INTERNAL",
                                          "deserializeCudaEngine")  # fmt: skip
    assert plugin < runtime < engine_made
    # each context goes first, then the device buffers bound to it, then its stream; then the engine and runtime
    context, device_free, stream, engine, rt = _order(
        events, "destroy context", "cudaFree ", "cudaStreamDestroy", "destroy engine", "destroy runtime"
    )
    assert context < device_free < stream < engine < rt
    assert max(i for i, e in enumerate(events) if e.startswith("cudaFree ")) < engine


def test_a_constructor_that_fails_after_creating_streams_releases_them(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt, profiles=[_plan("logits")["profiles"][0]] * 2, fail_profile="log")
    path, _ = _frame(tmp_path)
    proc, events = _trt(trt, tmp_path, bundle, path, "--raw", tmp_path / "raw.png")  # no LEAK of the stream
    assert_one_error_line(proc, 1, "optimization profile 1", "fake failure")
    assert sum(e.startswith("cudaStreamCreate") for e in events) == sum(
        e.startswith("cudaStreamDestroy") for e in events
    )


def test_steady_state_allocates_and_binds_nothing(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt)
    log = tmp_path / "fake.log"
    for width, height, batch in ((48, 32, 1), (67, 45, 3)):
        log.unlink(missing_ok=True)
        proc = run(trt["alloc"], bundle, "--backend", "trt", "--width", width, "--height", height, "--batch", batch,
                   env={"FAKE_TRT_LOG": str(log)})  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["segdeploy"] == 0
        events = log.read_text().splitlines()
        steady = events[events.index("MARK steady begin") + 1 : events.index("MARK steady end")]
        assert steady and all(e.startswith("enqueueV3") for e in steady), steady
        assert not [e for e in events if e.startswith(("VIOLATION", "LEAK"))]


# --------------------------------------------------------------------------- refusals and failures
def test_a_runtime_created_with_logged_errors_is_a_failure(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt)
    proc, events = _trt(trt, tmp_path, bundle, "--check-golden", env={"FAKE_TRT_RUNTIME_ERROR": "1"})
    assert_one_error_line(proc, 1, "could not create a runtime", "CUDA initialization failure with error: 35")
    assert not any(e.startswith("deserializeCudaEngine") for e in events)


@pytest.mark.parametrize(
    ("env", "code", "message"),
    [
        ({"FAKE_CUDA_DEVICE_COUNT_ERROR": "35"}, 5, "cudaErrorInsufficientDriver: CUDA driver version is insufficient"),
        ({"FAKE_CUDA_DEVICE_COUNT_ERROR": "100"}, 5, "cudaErrorNoDevice"),
        ({"FAKE_CUDA_DEVICES": "0"}, 5, "no CUDA GPU"),
        ({"FAKE_CUDA_CC": "7.5"}, 2, "compute capability 8.9 (Fake GPU) but this GPU (Fake GPU) is 7.5"),
    ],
)
def test_cuda_problems_keep_cuda_s_reason(trt, onnx_bundles, tmp_path, env, code, message):
    bundle = _bundle(onnx_bundles, tmp_path, trt)
    proc, _ = _trt(trt, tmp_path, bundle, "--check-golden", env=env)
    assert_one_error_line(proc, code, message)


@pytest.mark.parametrize(
    ("wanted", "library", "ok"),
    [("10.3.0", "10.3.0.26", True), ("10.3.0.26", "10.3.0.26", True), ("10.3", "10.3.0.26", False),
     ("10.3.1", "10.3.0.26", False), ("10.3.0.27", "10.3.0.26", False), ("11.1.0", "10.3.0.26", False)],
)  # fmt: skip
def test_the_plan_s_tensorrt_version_must_match_exactly(trt, onnx_bundles, tmp_path, wanted, library, ok):
    bundle = _bundle(onnx_bundles, tmp_path, trt, engine={"tensorrt_version": wanted})
    path, _ = _frame(tmp_path)
    proc, _ = _trt(trt, tmp_path, bundle, path, env={"FAKE_TRT_LIB_VERSION": library})
    if ok:
        assert proc.returncode == 0, proc.stderr
    else:
        assert_one_error_line(proc, 2, "rebuild the plan here")


@pytest.mark.parametrize(
    ("plan", "code", "message"),
    [
        ({"input": {"name": "input", "dtype": "uint8", "layout": "NHWC", "shape": [-1, -1, -1, 3], "format": "chw4"}},
         2, "uses format chw4"),
        ({"main": {"format": "dla_hwc4"}}, 2, "uses format dla_hwc4"),
        ({"main": {"dtype": "int8"}}, 2, "cannot read as logits"),
        ({"input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "shape": [-1, -1, -1, 3]}}, 2, "'image'"),
        ({"input": {"name": "input", "dtype": "float32", "layout": "NHWC", "shape": [-1, -1, -1, 3]}}, 2, "uint8"),
        ({"deserialize_error": "Serialization assertion failed: plan from another version"}, 2, "cannot load"),
        ({"deserialize_logs_error": "an error logged while returning an engine"}, 2, "an error logged"),
        ({"fail_set_address": "logits"}, 1, "refused the address of tensor 'logits'"),
        ({"fail_enqueue": "false"}, 1, "fake kernel failure"),
        ({"fail_enqueue": "log"}, 1, "fake error logged during a run"),
    ],
)  # fmt: skip
def test_plan_refusals_and_failures_are_one_line(trt, onnx_bundles, tmp_path, plan, code, message):
    bundle = _bundle(onnx_bundles, tmp_path, trt, **plan)
    path, _ = _frame(tmp_path)
    proc, _ = _trt(trt, tmp_path, bundle, path, "--raw", tmp_path / "raw.png")
    assert_one_error_line(proc, code, message)
    assert not (tmp_path / "raw.png").exists()


def test_plugins_are_initialised_before_a_plan_with_plugin_layers_loads(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt, plugins=True)
    path, _ = _frame(tmp_path)
    proc, _ = _trt(trt, tmp_path, bundle, path)
    assert proc.returncode == 0, proc.stderr
    proc, _ = _trt(trt, tmp_path, bundle, path, env={"FAKE_TRT_PLUGIN_FAIL": "1"})
    assert_one_error_line(proc, 2, "could not find plugin", "failed to initialise: fake plugin failure")


def test_the_logger_takes_messages_from_many_threads_and_verbose_shows_them(trt, onnx_bundles, tmp_path):
    bundle = _bundle(onnx_bundles, tmp_path, trt, log_threads=8)
    path, _ = _frame(tmp_path)
    proc, _ = _trt(trt, tmp_path, bundle, path, "--verbose")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("TensorRT: fake warning from thread") == 8 * 200
    quiet, _ = _trt(trt, tmp_path, bundle, path)
    assert quiet.returncode == 0 and quiet.stderr == ""


# --------------------------------------------------------------------------- golden tolerances per precision
@pytest.mark.parametrize(
    ("precision", "noise", "passes"),
    [("fp32", 0.0, True), ("fp32", 3e-3, False), ("fp16", 3e-3, True), ("fp16", 5e-2, False),
     ("int8", 5e-2, True), ("int8-fp16", 5e-2, True), ("int8", 0.6, False)],
)  # fmt: skip
def test_golden_check_uses_the_plan_s_precision(trt, onnx_bundles, tmp_path, precision, noise, passes):
    bundle = _bundle(onnx_bundles, tmp_path, trt, engine={"precision": precision})
    scores, _ = _reference(np.load(bundle / "golden" / "input.npy"))
    rng = np.random.default_rng(0)
    golden = scores + np.float32(noise) * np.abs(scores).max() * rng.uniform(-1, 1, scores.shape).astype(np.float32)
    np.save(bundle / "golden" / "output.npy", golden.astype(np.float32))
    proc, _ = _trt(trt, tmp_path, bundle, "--check-golden")
    if passes:
        assert proc.returncode == 0, proc.stderr
    else:
        assert_one_error_line(proc, 4, "golden check failed")


# --------------------------------------------------------------------------- CMake
def test_a_new_tensorrt_root_replaces_the_cached_paths_and_the_install_rpath_names_it(trt, tmp_path):
    other = next(v for v in VERSIONS if v != trt["version"])
    fake_other = _fake(other)
    build_dir = tmp_path / "configure"
    sdk = next((CPP / ".deps").glob("onnxruntime-*/.complete")).parent
    for fake in (trt["fake"], fake_other):
        proc = subprocess.run(
            ["cmake", "-S", str(CPP), "-B", str(build_dir), f"-DONNXRUNTIME_ROOT={sdk}", *_cmake_args(fake)],
            capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    cache = (build_dir / "CMakeCache.txt").read_text()
    assert f"TENSORRT_LIBRARY:FILEPATH={fake_other / 'root' / 'lib' / 'libnvinfer.so'}" in cache
    prefix = tmp_path / "installed"
    proc = subprocess.run(["cmake", "--install", str(trt["build"]), "--prefix", str(prefix)], capture_output=True,
                          text=True, timeout=600, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    dynamic = subprocess.run(["readelf", "-d", str(prefix / "bin" / "segdeploy_infer")], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    runpath = re.search(r"R(?:UN)?PATH.*\[(.*)\]", dynamic).group(1).split(":")
    assert str(trt["fake"] / "root" / "lib") in runpath and str(trt["fake"] / "cuda" / "lib") in runpath
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = subprocess.run([str(prefix / "bin" / "segdeploy_infer"), "--version"], capture_output=True, text=True,
                         env=env, check=False)  # fmt: skip
    assert out.returncode == 0 and f"TensorRT {trt['version']}" in out.stdout, out.stderr
