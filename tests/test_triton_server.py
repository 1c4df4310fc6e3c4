"""The bundle's Triton model repository in a real ``tritonserver`` (Triton 2.51.0 from ``nvidia-pytriton``).

That server has only the Python backend, so no bundle model can load; but everything Triton checks before it
needs the backend runs for real: the text proto, the config validation when it polls the repository (run
with ``--disable-auto-complete-config``, so the input/output entries are validated then too rather than
after the backend completes them), the name against the directory and the version policy. A model whose
load fails only with "unable to find backend library" passed all of it. See ``triton_server.py``.

What this cannot confirm, and ``test_bundle_triton.py`` covers instead: the tensors against the ONNX and
the warmup samples (the backend's checks), and serving a request (the stand-in server runs the client).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import triton_server
from bundle_helpers import (
    FLAVOURS,
    TRITON_ACCEPTS,
    TRITON_REFUSES,
    edit_triton_config,
    exports_for,
    fake_engine_for,
    needs_triton,
)

from segdeploy.bundle import check_bundle, write_bundle

pytestmark = [pytest.mark.slow, needs_triton]


@pytest.fixture(scope="session")
def server() -> Path:
    """The ``tritonserver`` directory, downloaded and extracted once into the test cache."""
    try:
        return triton_server.server_dir()
    except triton_server.ServerUnavailable as exc:
        pytest.skip(f"tritonserver {triton_server.TRITON_VERSION} unavailable here: {exc}")


def _passes_poll(model_dir: Path, server: Path) -> None:
    verdict = triton_server.load_model(model_dir, server)
    assert verdict.reaches_backend, f"Triton refused {model_dir.name}: {verdict.message}\n{verdict.log[-3000:]}"


def test_the_server_is_the_triton_release_the_docs_name(server, bundles):
    verdict = triton_server.load_model(bundles["logits"] / "triton" / "logits", server)
    options = dict(re.findall(r"^\| (\w+) +\| (\S+) +\|$", verdict.log, re.MULTILINE))
    assert options["server_version"] == triton_server.TRITON_VERSION
    assert options["model_control_mode"] == "MODE_EXPLICIT" and options["strict_model_config"] == "1"


def test_the_verdict_tells_a_refused_config_from_a_missing_backend(server, tmp_path):
    model = tmp_path / "m"
    (model / "1").mkdir(parents=True)
    (model / "1" / "model.onnx").write_bytes(b"not read before the backend")
    good = 'name: "m"\nbackend: "onnxruntime"\nmax_batch_size: 0\n'
    good += 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    good += 'output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]\n'
    (model / "config.pbtxt").write_text(good)
    loaded = triton_server.load_model(model, server)
    assert loaded.reaches_backend and "'onnxruntime'" in loaded.message
    (model / "config.pbtxt").write_text(good.replace("max_batch_size: 0", "max_batch_size: -1"))
    refused = triton_server.load_model(model, server)
    assert not refused.reaches_backend and "'max_batch_size' must be non-negative" in refused.message


def test_without_the_wheel_the_server_is_skipped_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # offline: no index, and no local wheel directory either
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    with pytest.raises(triton_server.ServerUnavailable, match=r"cannot download nvidia-pytriton==0\.7\.0 with pip: "):
        triton_server.server_dir(tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.whl"))


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_every_bundle_flavour_passes_tritons_config_checks(server, bundles, name):
    _passes_poll(bundles[name] / "triton" / name, server)


def test_a_bundle_with_an_engine_passes_for_both_models(server, tmp_path_factory, tmp_path):
    onnx_path = exports_for(tmp_path_factory)["fp16_probs"]
    bundle = write_bundle(onnx_path, tmp_path / "b", engine=fake_engine_for(onnx_path, tmp_path), name="seg")
    assert check_bundle(bundle).ok
    for name in ("seg", "seg_trt"):
        verdict = triton_server.load_model(bundle / "triton" / name, server)
        assert verdict.reaches_backend, verdict.message
        backend = "tensorrt" if name.endswith("_trt") else "onnxruntime"
        assert f"backend '{backend}'" in verdict.message


@pytest.mark.parametrize("edit", TRITON_ACCEPTS, ids=lambda e: e.label)
def test_what_the_check_accepts_passes_tritons_config_checks(server, copy_of, edit):
    bundle = edit_triton_config(copy_of, edit)
    assert check_bundle(bundle).ok
    _passes_poll(bundle / "triton" / edit.flavour, server)


@pytest.mark.parametrize("edit", TRITON_REFUSES, ids=lambda e: e.label)
def test_what_triton_refuses_the_check_refuses(server, copy_of, edit):
    bundle = edit_triton_config(copy_of, edit)
    problems = check_bundle(bundle).problems
    assert problems and edit.fragment in problems[0], problems
    verdict = triton_server.load_model(bundle / "triton" / edit.flavour, server)
    if edit.at_poll:
        assert not verdict.reaches_backend, f"Triton let {edit.label} through to the backend"
    else:
        # Left to the backend or to requests: Triton's own checks pass it, so only our check (and the
        # backend, which this server lacks) stands between it and a deployment.
        assert verdict.reaches_backend, f"Triton refused {edit.label} itself: {verdict.message}"
