"""segdeploy.bench: statistics, the timing loop, record schema, request checks and the bench CLI."""

from __future__ import annotations

import json
import math
import mmap
from pathlib import Path

import numpy as np
import pytest

from segdeploy import bench, cache, pipeline
from segdeploy.artifact import Runtime
from segdeploy.bench import BenchRecord, BenchSuite, benchmark, latency_stats
from segdeploy.errors import MissingDependencyError, UserInputError
from segdeploy.runtime import base
from segdeploy.runtime.base import Measurement, Runner


# --------------------------------------------------------------------------- statistics
def test_latency_stats_of_one_to_hundred_match_linear_interpolation():
    stats = latency_stats([float(v) for v in range(100, 0, -1)])  # order must not matter
    assert stats.n == 100
    assert stats.mean == pytest.approx(50.5)
    assert stats.min == 1.0
    # linear interpolation: rank q * (n - 1) between sorted samples
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.std == pytest.approx(math.sqrt(100 * 101 / 12))  # sample std of 1..100


def test_latency_stats_tail_percentiles_see_one_slow_outlier():
    samples = [10.0] * 99 + [1000.0]
    stats = latency_stats(samples)
    assert stats.p50 == 10.0
    assert stats.p90 == 10.0
    assert stats.p99 == pytest.approx(10.0 + 0.01 * 990.0)
    assert stats.mean == pytest.approx(19.9)


def test_latency_stats_of_a_single_sample_has_zero_spread():
    stats = latency_stats([3.5])
    assert (stats.mean, stats.min, stats.p50, stats.p99, stats.std, stats.n) == (3.5, 3.5, 3.5, 3.5, 0.0, 1)


@pytest.mark.parametrize("samples", [[], [1.0, float("nan")], [float("inf")]])
def test_latency_stats_refuses_empty_or_non_finite_samples(samples):
    with pytest.raises(ValueError):
        latency_stats(samples)


# --------------------------------------------------------------------------- timing loop
class FakeClock:
    """Stands in for perf_counter_ns: time moves only when a step runs."""

    def __init__(self) -> None:
        self.now_ns = 0

    def __call__(self) -> int:
        return self.now_ns


class SteppingRunner(Runner):
    """A runner whose steps take known durations on a fake clock."""

    runtime = Runtime.ORT

    def __init__(self, clock: FakeClock, durations_ms: list[float]) -> None:
        super().__init__("fp32")
        self.clock = clock
        self.durations_ms = durations_ms
        self.calls = 0
        self.activations = 0

    def _activate(self) -> None:
        self.activations += 1

    def _prepare(self, batch: np.ndarray):
        def step() -> None:
            duration = self.durations_ms[min(self.calls, len(self.durations_ms) - 1)]
            self.clock.now_ns += int(duration * 1e6)
            self.calls += 1

        return step


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(base.time, "perf_counter_ns", fake)
    return fake


def test_benchmark_times_each_step_after_warmup(clock):
    # warm-up steps take 100 ms and must not show up in the statistics
    runner = SteppingRunner(clock, [100.0, 100.0, 2.0, 4.0, 6.0, 8.0])
    record = benchmark(runner, np.zeros((2, 3, 8, 8), np.float32), warmup=2, iters=4, flops_per_image=10**9)
    assert runner.calls == 6
    assert record.iterations == 4
    assert record.latency.mean == pytest.approx(5.0)
    assert record.latency.min == pytest.approx(2.0)
    assert record.throughput == pytest.approx(2 / 0.005)  # batch / mean seconds
    assert record.gflops == pytest.approx(10**9 * 2 / 0.005 / 1e9)
    assert record.timing == "wall"
    assert record.shape == (2, 3, 8, 8) and record.batch == 2


def test_benchmark_with_seconds_runs_until_budget_but_at_least_min_iters(clock):
    runner = SteppingRunner(clock, [10.0])
    record = benchmark(runner, np.zeros((1, 3, 8, 8), np.float32), warmup=0, seconds=0.1, min_iters=3)
    assert record.iterations == 10  # 10 steps of 10 ms fill 0.1 s
    slow = SteppingRunner(clock, [500.0])
    record = benchmark(slow, np.zeros((1, 3, 8, 8), np.float32), warmup=0, seconds=0.1, min_iters=3)
    assert record.iterations == 3  # the budget is spent after one step, min_iters still holds


def test_benchmark_enters_an_inactive_runner_and_leaves_it(clock):
    runner = SteppingRunner(clock, [1.0])
    benchmark(runner, np.zeros((1, 3, 4, 4), np.float32), warmup=0, iters=2)
    assert runner.activations == 1
    assert not runner.is_active


def test_benchmark_without_flops_reports_no_gflops(clock):
    record = benchmark(SteppingRunner(clock, [1.0]), np.zeros((1, 3, 4, 4), np.float32), warmup=0, iters=2)
    assert record.flops_per_image is None and record.gflops is None


@pytest.mark.parametrize("options", [{"iters": 0}, {"seconds": -1.0}, {"warmup": -1}])
def test_benchmark_refuses_nonsense_loop_options(clock, options):
    with pytest.raises(UserInputError):
        benchmark(SteppingRunner(clock, [1.0]), np.zeros((1, 3, 4, 4), np.float32), **options)


class FakeTrtRunner(Runner):
    """Measures itself with CUDA events, like TrtRunner, without a GPU."""

    runtime = Runtime.TRT
    timing = "cuda_events"

    def measure(self, batch, *, warmup=10, iters=None, seconds=None, min_iters=10, cuda_graph=False):
        self.cuda_graph = cuda_graph
        compute = [1.0, 2.0, 3.0][:iters] + [2.0] * max(0, iters - 3)
        return Measurement(compute, "cuda_events", gpu_compute_ms=compute, end_to_end_ms=[5.0] * iters)


def test_gpu_runner_reports_compute_and_end_to_end_separately():
    runner = FakeTrtRunner("fp16")
    record = benchmark(runner, np.zeros((1, 3, 4, 4), np.float32), iters=3, cuda_graph=True)
    data = record.to_dict()
    assert runner.cuda_graph is True
    assert data["timing"] == "cuda_events"
    assert data["latency_ms"]["mean"] == pytest.approx(2.0)  # GPU compute is the headline latency
    assert data["gpu_compute_ms"]["p50"] == pytest.approx(2.0)
    assert data["end_to_end_ms"]["mean"] == pytest.approx(5.0)
    assert data["precision"] == "fp16"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset is Linux-only")
def test_peak_memory_sees_native_allocations_during_the_run():
    class Allocating(Runner):
        runtime = Runtime.ORT

        def _prepare(self, batch):
            def step():
                # A fresh anonymous mapping: malloc could instead reuse freed pages that are
                # still resident after earlier tests, which raises no RSS (order-dependent).
                with mmap.mmap(-1, 64 * 2**20) as block:
                    for offset in range(0, len(block), 4096):
                        block[offset] = 1  # touch every page so it becomes resident

            return step

    record = benchmark(Allocating(), np.zeros((1, 3, 4, 4), np.float32), warmup=0, iters=2)
    assert record.peak_memory_mb is not None
    assert 50 <= record.peak_memory_mb < 1024


# --------------------------------------------------------------------------- JSON schema
def _record(engine: str = "torch", mean: float = 4.0, batch: int = 1) -> BenchRecord:
    stats = latency_stats([mean - 1, mean, mean + 1])
    return BenchRecord(
        model="unet", engine=engine, precision="fp32", batch=batch, shape=(batch, 3, 64, 64), latency=stats,
        flops_per_image=2 * 10**9, peak_memory_mb=12.5, threads=2,
    )  # fmt: skip


def test_record_json_has_the_documented_keys_and_types():
    data = json.loads(json.dumps(_record().to_dict()))
    assert isinstance(data["model"], str) and data["engine"] == "torch" and data["precision"] == "fp32"
    assert data["batch"] == 1 and data["shape"] == [1, 3, 64, 64]
    assert set(data["latency_ms"]) >= {"mean", "min", "p50", "p90", "p99"}
    assert all(isinstance(v, float) for v in data["latency_ms"].values())
    assert data["throughput"] == pytest.approx(250.0)
    assert data["flops_per_image"] == 2 * 10**9
    assert data["gflops"] == pytest.approx(500.0)
    assert isinstance(data["peak_memory_mb"], float)
    assert data["iterations"] == 3 and data["timing"] == "wall"
    assert "gpu_compute_ms" not in data and "end_to_end_ms" not in data


def test_suite_json_holds_environment_and_records_and_reads_back():
    suite = BenchSuite(records=[_record("torch"), _record("ort", 2.0)], environment={"python": "3.11"})
    data = json.loads(json.dumps(suite.to_dict()))
    assert set(data) == {"environment", "records"}
    assert [r["engine"] for r in data["records"]] == ["torch", "ort"]
    again = BenchRecord.from_dict(data["records"][1])
    assert again.latency.mean == pytest.approx(2.0) and again.iterations == 3 and again.shape == (1, 3, 64, 64)


# --------------------------------------------------------------------------- request checks and cache
def test_fp16_on_torch_is_refused_before_any_work():
    with pytest.raises(UserInputError, match="fp16"):
        bench.check_request([], ["torch"], "fp16")


def test_onnx_file_with_torch_engine_is_refused(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    targets = bench.resolve_targets([str(path)])
    assert targets[0].kind == "onnx"
    with pytest.raises(UserInputError, match="torch engine needs a zoo model"):
        bench.check_request(targets, ["torch", "ort"], None)
    assert bench.default_engines(targets) == [Runtime.ORT]


def test_unknown_engine_is_refused():
    with pytest.raises(UserInputError, match="bad engine 'tensorflow': choose torch, ort, trt"):
        bench.check_request([], ["tensorflow"], "fp32")


@pytest.fixture
def no_tensorrt(monkeypatch):
    import segdeploy.environment

    monkeypatch.setattr(segdeploy.environment, "tensorrt_status", lambda: (None, "TensorRT is not installed"))


def test_trt_without_tensorrt_is_a_missing_dependency(no_tensorrt):
    with pytest.raises(MissingDependencyError, match="TensorRT"):
        bench.check_request(bench.resolve_targets(["unet"]), ["trt"], "fp32")


def test_bench_restores_the_torch_thread_count(tmp_path, monkeypatch):
    import torch

    model = tmp_path / "tiny.onnx"
    _tiny_conv_onnx(model)
    before = torch.get_num_threads()
    other = 2 if before != 2 else 1
    pipeline.run_benchmarks([str(model)], shape=(1, 3, 16, 16), iters=1, warmup=0, threads=other)
    assert torch.get_num_threads() == before


# --------------------------------------------------------------------------- CLI
@pytest.fixture
def cli():
    from typer.testing import CliRunner

    from segdeploy.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["bench", *args], env={"COLUMNS": "200"})


def test_cli_trt_without_tensorrt_exits_5_with_one_line(cli, no_tensorrt):
    result = cli("unet", "--engine", "trt")
    assert result.exit_code == 5
    assert len(result.stderr.strip().splitlines()) == 1 and "TensorRT" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["unet", "--shape", "1x3x64"], "bad shape"),
        (["no_such_net", "--shape", "1x3x64x64"], "unknown model"),
        (["unet", "--batch", "1,x"], "bad --batch"),
        (["unet", "--iters", "3", "--seconds", "1"], "not both"),
        (["unet", "--precision", "fp16"], "fp16"),
        (["unet", "--plot", "latency.txt"], ".png"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(cli, args, message):
    result = cli(*args)
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


SMALL_UNET = ["unet", "--small", "--shape", "1x3x64x64"]


def _tiny_conv_onnx(path: Path) -> None:
    """A one-convolution ONNX with dynamic N/H/W: instant to build, stands in for an export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"], pads=[1, 1, 1, 1])],
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.save(model, path)


def test_cli_smoke_torch_and_ort_side_by_side(cli, tmp_path, monkeypatch):
    # The exporter has its own tests and takes tens of seconds on 2 cores: put a tiny ONNX where the
    # cache expects unet's export, and fail if the bench exports anyway (the cache must be reused).
    monkeypatch.setenv("SEGDEPLOY_CACHE", str(tmp_path / "cache"))
    from segdeploy.models import model_info

    cached = cache.onnx_cache_path("unet", config=model_info("unet").test_config, shape=(1, 3, 64, 64))
    cached.parent.mkdir(parents=True)
    _tiny_conv_onnx(cached)
    import segdeploy.export.onnx

    monkeypatch.setattr(segdeploy.export.onnx, "build_onnx", lambda *a, **k: pytest.fail("exported despite the cache"))
    # the bench exports at each batch's shape only through the cache: batch 1 is the shape asked for

    out_json, out_csv = tmp_path / "bench.json", tmp_path / "bench.csv"
    args = [*SMALL_UNET, "--batch", "1,2", "--iters", "3", "--warmup", "1", "--threads", "1"]
    result = cli(*args, "--report", str(out_json), "--csv", str(out_csv))
    assert result.exit_code == 0, result.output
    assert "speed-up" in result.stdout and "1.00x" in result.stdout
    data = json.loads(out_json.read_text())
    assert [(r["engine"], r["batch"]) for r in data["records"]] == [("torch", 1), ("torch", 2), ("ort", 1), ("ort", 2)]
    for record in data["records"]:
        assert record["iterations"] == 3 and record["flops_per_image"] > 0 and record["threads"] == 1
        assert record["shape"][1:] == [3, 64, 64] and record["latency_ms"]["min"] > 0
    assert data["environment"]["bench_threads"] == 1
    assert len(out_csv.read_text().splitlines()) == 5


def test_cli_bench_of_an_onnx_file_defaults_to_ort_and_prints_markdown(cli, tmp_path):
    model = tmp_path / "tiny.onnx"
    _tiny_conv_onnx(model)
    result = cli(str(model), "--shape", "2x3x40x48", "--iters", "2", "--warmup", "0", "--markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| model | engine |") and len(lines) == 3
    assert lines[2].startswith("| tiny | ort | fp32 | 2 |")


def test_cli_json_is_a_switch_printing_the_records_to_stdout(cli, tmp_path):
    model = tmp_path / "tiny.onnx"
    _tiny_conv_onnx(model)
    result = cli(str(model), "--shape", "1x3x16x16", "--iters", "2", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["model"] for r in data["records"]] == ["tiny"] and "environment" in data


def test_cli_labels_a_file_with_the_precision_in_its_metadata(cli, tmp_path):
    import onnx

    model = tmp_path / "half.onnx"
    _tiny_conv_onnx(model)
    proto = onnx.load(str(model))
    onnx.helper.set_model_props(proto, {"precision": "fp16"})  # float32 I/O: what runs here is the metadata's label
    onnx.save(proto, str(model))
    result = cli(str(model), "--shape", "1x3x16x16", "--iters", "2", "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    assert [r["precision"] for r in json.loads(result.stdout)["records"]] == ["fp16"]
    asked = cli(str(model), "--precision", "fp32", "--iters", "2")
    assert asked.exit_code == 2 and "carries its own precision" in asked.stderr


def test_cli_int8_asks_for_calibration_by_an_option_that_exists(cli, tmp_path, monkeypatch):
    missing = cli("unet", "--engine", "ort", "--precision", "int8", "--iters", "2")
    assert missing.exit_code == 2 and "--calib" in missing.stderr
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((2, 3, 64, 64), np.float32))
    exported = {}

    def fake_cached_onnx(name, **options):
        exported.update(options)
        _tiny_conv_onnx(tmp_path / "int8.onnx")
        return tmp_path / "int8.onnx"

    monkeypatch.setattr(pipeline, "cached_onnx", fake_cached_onnx)
    args = ["--engine", "ort", "--precision", "int8", "--calib", str(calib), "--calib-size", "2", "--iters", "2"]
    result = cli(*SMALL_UNET, *args, "--warmup", "0", "--json")
    assert result.exit_code == 0, result.output
    assert exported["calibration"] == calib and exported["calib_size"] == 2
    assert [r["precision"] for r in json.loads(result.stdout)["records"]] == ["int8"]
    fp32 = cli("unet", "--engine", "ort", "--calib", str(calib), "--iters", "2")
    assert fp32.exit_code == 2 and "--calib is for --precision int8" in fp32.stderr


@pytest.mark.slow
def test_cli_exports_a_zoo_model_once_and_reuses_the_cache(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SEGDEPLOY_CACHE", str(tmp_path / "cache"))
    for _ in range(2):
        result = cli(*SMALL_UNET, "--iters", "2", "--warmup", "1", "--engine", "ort")
        assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "cache" / "onnx").glob("unet-17-fp32-*.onnx"))) == 1
