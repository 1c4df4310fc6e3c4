"""The benchmark scripts: run_cpu.py renders what it measured, and every script imports names that exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "run_cpu.py"


@pytest.fixture(scope="module")
def run_cpu():
    spec = importlib.util.spec_from_file_location("run_cpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _record(model: str, engine: str, mean: float, gflops: float) -> dict:
    return {"model": model, "engine": engine, "latency_ms": {"mean": mean}, "gflops": gflops}


def test_markdown_shows_speedup_share_of_ceiling_and_the_fixed_shape_unpooling_ratio(run_cpu):
    result = {
        "date": "2026-01-01",
        "shape": "1x3x512x512",
        "threads": 2,
        "iterations_note": "3 warm-up steps, 10 timed steps",
        "matmul_gflops": 200.0,
        "environment": {"cpu": {"model": "Test CPU", "cores": 2}},
        "records": [_record("segnet", "torch", 300.0, 80.0), _record("segnet", "ort", 200.0, 150.0)],
        "segnet_unpooling": {
            "shape": [1, 3, 512, 512],
            "rounds": 5,
            "median_p50_ms": {"stock": 100.0, "rewritten": 103.0, "rewritten_dynamic": 106.0},
            "ratio": 1.03,
            "ratio_dynamic": 1.06,
        },
        "trt_records": [],
    }
    text = run_cpu.markdown(result)
    assert "| segnet | 300.0 | 200.0 | 1.50x | 150 | 75% |" in text
    assert "fixed shape" in text and "ratio 1.030 (target <= 1.05)" in text
    assert "dynamic N/H/W file: 106.0 ms, ratio 1.060" in text
    assert "TensorRT" not in text


@pytest.mark.parametrize("script", sorted(SCRIPT.parent.glob("*.py")), ids=lambda p: p.name)
def test_every_name_a_benchmark_script_imports_from_segdeploy_exists(script):
    # The scripts import segdeploy inside functions and run for minutes: a name that moved in the
    # package would otherwise surface only when someone next runs the benchmark.
    import ast
    import importlib

    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segdeploy":
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), (
                    f"{script.name}: from {node.module} import {alias.name}"
                )
