"""segdeploy.cache: keys that change with everything that makes an artifact differ."""

from __future__ import annotations

from pathlib import Path

import pytest

from segdeploy import cache

SHAPE = (1, 3, 64, 64)


def test_onnx_cache_path_follows_env_and_changes_with_config_shape_and_precision(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGDEPLOY_CACHE", str(tmp_path))
    a = cache.onnx_cache_path("unet", config={"width_mult": 0.125}, shape=SHAPE)
    assert a.parent == tmp_path / "onnx" and a.name.startswith("unet-17-fp32-") and a.suffix == ".onnx"
    assert a == cache.onnx_cache_path("unet", config={"width_mult": 0.125}, shape=SHAPE)
    others = [
        cache.onnx_cache_path("unet", config={"width_mult": 0.25}, shape=SHAPE),
        cache.onnx_cache_path("unet", config={"width_mult": 0.125}, shape=(1, 3, 96, 64)),
        cache.onnx_cache_path("unet", config={"width_mult": 0.125}, shape=SHAPE, precision="fp16"),
        cache.onnx_cache_path("unet", config={"width_mult": 0.125}, shape=SHAPE, num_classes=4),
        cache.onnx_cache_path("unet", config={"width_mult": 0.125}, shape=SHAPE, opset=18),
    ]
    assert len({a, *others}) == 6


def test_onnx_cache_path_changes_when_the_export_code_changes(tmp_path, monkeypatch):
    # A stale export must not be served after a model or rewrite is edited in a checkout.
    before = cache.onnx_cache_path("unet", config={}, shape=SHAPE, cache_dir=tmp_path)
    monkeypatch.setattr(cache, "export_fingerprint", lambda: "edited-rewrites")
    after = cache.onnx_cache_path("unet", config={}, shape=SHAPE, cache_dir=tmp_path)
    assert before != after and before.parent == after.parent


def test_export_fingerprint_covers_the_rewrite_sources(monkeypatch):
    real_read = Path.read_bytes
    cache.export_fingerprint.cache_clear()
    original = cache.export_fingerprint()

    def edited(path):
        data = real_read(path)
        return data + b"# edited" if path.name == "rewrites.py" else data

    monkeypatch.setattr(Path, "read_bytes", edited)
    cache.export_fingerprint.cache_clear()
    try:
        assert cache.export_fingerprint() != original
    finally:
        monkeypatch.undo()
        cache.export_fingerprint.cache_clear()
    assert cache.export_fingerprint() == original


@pytest.fixture
def onnx_file(tmp_path) -> Path:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"model bytes")
    return path


ENGINE = {
    "profile": [(1, 3, 32, 32), (1, 3, 64, 64), (2, 3, 128, 128)],
    "precision": "fp16",
    "trt_version": "10.3.0.30",
    "gpu_name": "Orin",
    "compute_capability": "8.7",
}


def test_engine_cache_misses_after_a_tensorrt_upgrade_or_on_another_gpu(onnx_file, tmp_path):
    base = cache.engine_cache_path(onnx_file, **ENGINE, cache_dir=tmp_path)
    assert base.parent == tmp_path / "engines" and base.name.startswith("m-fp16-")
    assert base == cache.engine_cache_path(onnx_file, **ENGINE, cache_dir=tmp_path)
    changed = [
        {"trt_version": "10.4.0.26"},
        {"gpu_name": "A100", "compute_capability": "8.0"},
        {"compute_capability": "8.6"},
        {"precision": "fp32"},
        {"profile": [(1, 3, 32, 32), (1, 3, 64, 64), (4, 3, 128, 128)]},
    ]
    paths = {cache.engine_cache_path(onnx_file, **{**ENGINE, **change}, cache_dir=tmp_path) for change in changed}
    assert base not in paths and len(paths) == len(changed)


def test_engine_cache_follows_the_onnx_bytes_not_its_name(onnx_file, tmp_path):
    before = cache.engine_cache_path(onnx_file, **ENGINE, cache_dir=tmp_path)
    onnx_file.write_bytes(b"re-exported model")
    assert cache.engine_cache_path(onnx_file, **ENGINE, cache_dir=tmp_path) != before
