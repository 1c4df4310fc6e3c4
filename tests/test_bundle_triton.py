"""The bundle's Triton model repository: configs against Triton's own schema and load-time rules, and
``client.py`` against a stand-in server that speaks the part of the KServe v2 HTTP protocol it uses.

The hand edits (``TRITON_ACCEPTS``, ``TRITON_REFUSES`` in ``bundle_helpers``) are shared with
``test_triton_server.py``, which loads them into a real ``tritonserver`` (heavy tier): that server reads and
validates the config but has no ONNX Runtime or TensorRT backend, so it cannot check tensors against the
model or run a request. The client is therefore tested here against a stand-in that reads the bundle's own
``config.pbtxt`` (with Triton's ModelConfig schema), refuses requests that do not fit it as Triton does, and
runs the bundle's ``1/model.onnx``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from bundle_helpers import (
    FLAVOURS,
    TRITON_ACCEPTS,
    TRITON_REFUSES,
    edit_text,
    edit_triton_config,
    fake_engine_for,
    needs_triton,
    rehash,
)

from segdeploy.bundle import check_bundle, write_bundle
from segdeploy.bundle.manifest import BundleManifest

pytestmark = needs_triton


def _config(bundle: Path, name: str) -> Path:
    return bundle / f"triton/{name}/config.pbtxt"


@pytest.mark.parametrize("name", list(FLAVOURS))
def test_triton_configs_parse_with_tritons_schema_and_match_the_onnx(bundles, name):
    from segdeploy.bundle.triton import model_config_module, parse_config

    report = check_bundle(bundles[name])
    assert [r.status for r in report.results if r.name.startswith("triton")] == ["ok"]
    config = parse_config(_config(bundles[name], name).read_text())
    assert config.name == name and config.backend == "onnxruntime"
    if name == "gray_probs":  # fixed batch: Triton must not batch, the dims carry the batch
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert list(config.input[0].dims) == [2, 1, 20, 28] and list(config.output[0].dims) == [2, 1, 20, 28]
    else:
        assert config.max_batch_size == 8 and config.HasField("dynamic_batching")
    if name == "u8_classmap":
        types = model_config_module().DataType
        assert list(config.input[0].dims) == [-1, -1, 3] and list(config.output[0].dims) == [-1, -1]
        assert config.input[0].data_type == types.Value("TYPE_UINT8")
        assert config.output[0].data_type == types.Value("TYPE_INT32")


@pytest.mark.parametrize("edit", TRITON_ACCEPTS, ids=lambda e: e.label)
def test_check_accepts_what_triton_loads(copy_of, edit):
    report = check_bundle(edit_triton_config(copy_of, edit))
    assert report.ok, report.problems


@pytest.mark.parametrize("edit", TRITON_REFUSES, ids=lambda e: e.label)
def test_check_refuses_what_triton_refuses_at_load(copy_of, edit):
    problems = check_bundle(edit_triton_config(copy_of, edit)).problems
    assert problems and edit.fragment in problems[0], problems


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (("max_batch_size: 4", "max_batch_size: 16"), "exceeds the engine profile's largest batch 4"),
        (("dims: [ 3, -1, -1 ]", "dims: [ 3, 32, 128 ]"), "dim 128 is outside the engine profile 32..64"),
    ],
)
def test_a_tensorrt_config_beyond_the_plans_profile_is_refused(onnx_files, tmp_path, edit, fragment):
    bundle = write_bundle(
        onnx_files["fp16_probs"], tmp_path / "b", engine=fake_engine_for(onnx_files["fp16_probs"], tmp_path), name="seg"
    )
    edit_text(_config(bundle, "seg_trt"), *edit)
    rehash(bundle)
    problems = check_bundle(bundle).problems
    assert problems and fragment in problems[0], problems


# --------------------------------------------------------------------------- client.py
class _StandIn(BaseHTTPRequestHandler):
    """Readiness and inference (binary tensor extension) of the KServe v2 protocol, for one bundle."""

    bundle: Path
    requests: list[dict] = []

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, code: int, message: str) -> None:
        self._send(code, json.dumps({"error": message}).encode(), {"Content-Type": "application/json"})

    def do_GET(self):
        match = re.fullmatch(r"/v2/models/([^/]+)/ready", self.path)
        ok = match is not None and (self.bundle / "triton" / match.group(1) / "config.pbtxt").is_file()
        self._send(200 if ok else 400, b"")

    def do_POST(self):
        import onnxruntime as ort

        from segdeploy.bundle.triton import parse_config

        match = re.fullmatch(r"/v2/models/([^/]+)/infer", self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        header_length = int(self.headers.get("Inference-Header-Content-Length", len(body)))
        request, data = json.loads(body[:header_length]), body[header_length:]
        type(self).requests.append(request)
        model_dir = self.bundle / "triton" / match.group(1)
        config = parse_config((model_dir / "config.pbtxt").read_text())
        (tensor,) = request["inputs"]
        declared = config.input[0]
        dims = ([-1] if config.max_batch_size > 0 else []) + list(declared.dims)
        kinds = {"TYPE_FP32": ("FP32", np.float32), "TYPE_UINT8": ("UINT8", np.uint8)}
        name = type(config).DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"]
        wanted, dtype = kinds[name.enum_type.values_by_number[declared.data_type].name]
        shape = tensor["shape"]
        if tensor["name"] != declared.name or tensor["datatype"] != wanted:
            return self._error(400, f"unexpected input {tensor['name']} {tensor['datatype']}")
        if len(shape) != len(dims) or any(d != -1 and d != s for d, s in zip(dims, shape)):
            return self._error(400, f"unexpected shape {shape} for dims {dims}")
        if config.max_batch_size > 0 and shape[0] > config.max_batch_size:
            return self._error(400, "batch too large")
        x = np.frombuffer(data[: tensor["parameters"]["binary_data_size"]], dtype=dtype).reshape(shape)
        session = ort.InferenceSession(str(model_dir / "1/model.onnx"), providers=["CPUExecutionProvider"])
        out_name = request["outputs"][0]["name"]
        y = np.ascontiguousarray(session.run([out_name], {tensor["name"]: x})[0])
        datatype = {"float32": "FP32", "int32": "INT32"}[y.dtype.name]
        meta = {
            "model_name": match.group(1),
            "outputs": [
                {
                    "name": out_name,
                    "datatype": datatype,
                    "shape": list(y.shape),
                    "parameters": {"binary_data_size": y.nbytes},
                }
            ],
        }
        header = json.dumps(meta).encode()
        self._send(
            200,
            header + y.tobytes(),
            {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))},
        )


@pytest.fixture
def stand_in(bundles):
    servers = []

    def start(bundle: Path) -> str:
        handler = type("Handler", (_StandIn,), {"bundle": bundle, "requests": []})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("name", ["u8_classmap", "logits", "gray_probs"])
def test_client_sends_an_image_and_writes_the_mask_segdeploys_pipeline_gives(bundles, stand_in, tmp_path, name):
    import cv2
    import onnxruntime as ort

    bundle = bundles[name]
    url = stand_in(bundle)
    manifest = BundleManifest.read(bundle)
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:53, 0:71]
    image = np.clip(np.stack([yy * 4, xx * 3, yy + xx], -1) + rng.normal(0, 12, (53, 71, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "frame.png"), image)  # OpenCV writes BGR
    mask_path = tmp_path / "mask.png"
    result = subprocess.run(
        [sys.executable, str(bundle / "client.py"), str(tmp_path / "frame.png"), "-o", str(mask_path), "--url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = cv2.imread(str(mask_path))[:, :, ::-1]  # back to RGB
    # the same frame through segdeploy's own pipeline and ONNX Runtime
    pipe = manifest.pipeline
    frame = image[:, :, ::-1]  # RGB
    x = pipe.to_input([frame] * (pipe.fixed_batch or 1), frame_color="rgb")
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    classes = pipe.restore(pipe.to_classmap(session.run(None, {"input": x})[0])[0], frame.shape[:2])
    expected = np.asarray(manifest.palette, np.uint8)[classes]
    np.testing.assert_array_equal(written, expected)
    assert len(np.unique(classes)) > 1


def test_client_says_in_one_line_what_is_wrong(bundles, stand_in, tmp_path):
    bundle = bundles["logits"]
    url = stand_in(bundle)
    run = lambda *args: subprocess.run(
        [sys.executable, str(bundle / "client.py"), *map(str, args)], capture_output=True, text=True, timeout=120
    )
    missing = run(tmp_path / "none.png", "--url", url)
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"error: cannot read image {tmp_path / 'none.png'}: No such file or directory"
    (tmp_path / "text.png").write_text("not an image")
    garbage = run(tmp_path / "text.png", "--url", url)
    assert garbage.returncode == 2 and garbage.stderr.strip() == f"error: cannot decode image {tmp_path / 'text.png'}"
    import cv2

    cv2.imwrite(str(tmp_path / "f.png"), np.zeros((8, 8, 3), np.uint8))
    wrong = run(tmp_path / "f.png", "--url", url, "--model", "nope")
    assert wrong.returncode == 1 and "not ready" in wrong.stderr and len(wrong.stderr.strip().splitlines()) == 1
