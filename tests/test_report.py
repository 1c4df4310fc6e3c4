"""segdeploy.report: speed-up column, table, JSON/CSV/Markdown writers and the plot."""

from __future__ import annotations

import csv
import io
import json
import sys

import pytest

from segdeploy import report
from segdeploy.bench import BenchRecord, BenchSuite, latency_stats
from segdeploy.errors import MissingDependencyError, UserInputError


def _record(model: str, engine: str, mean: float, batch: int = 1, flops: int | None = 10**9) -> BenchRecord:
    return BenchRecord(
        model=model, engine=engine, precision="fp32", batch=batch, shape=(batch, 3, 64, 64),
        latency=latency_stats([mean * 0.5, mean, mean * 1.5]), flops_per_image=flops,
    )  # fmt: skip


@pytest.fixture
def records() -> list[BenchRecord]:
    return [
        _record("unet", "torch", 8.0),
        _record("unet", "ort", 4.0),
        _record("unet", "torch", 20.0, batch=4),
        _record("unet", "ort", 25.0, batch=4),
        _record("segnet.onnx", "ort", 3.0, flops=None),
    ]


def test_speedup_is_over_the_first_engine_of_the_same_model_and_batch(records):
    assert report.speedups(records) == pytest.approx([1.0, 2.0, 1.0, 0.8, 1.0])


def test_csv_has_every_column_and_round_trips_numbers(records):
    parsed = list(csv.DictReader(io.StringIO(report.csv_text(records))))
    assert list(parsed[0]) == list(report.CSV_COLUMNS)
    assert len(parsed) == 5
    assert float(parsed[1]["mean_ms"]) == pytest.approx(4.0)
    assert float(parsed[1]["speedup"]) == pytest.approx(2.0)
    assert float(parsed[1]["images_per_s"]) == pytest.approx(250.0)
    assert parsed[2]["shape"] == "4x3x64x64"
    assert parsed[4]["gflops"] == "" and parsed[4]["flops_per_image"] == ""  # unknown, not zero


def test_markdown_table_has_header_separator_and_one_row_per_record(records):
    lines = report.markdown_table(records).splitlines()
    assert lines[0].startswith("| model | engine | precision | batch | mean ms |")
    assert set(lines[1]) <= set("|-:")
    assert len(lines) == 2 + len(records)
    cells = [c.strip() for c in lines[2 + 1].strip("|").split("|")]
    assert cells[:4] == ["unet", "ort", "fp32", "1"]
    assert cells[4] == "4.00" and cells[-1] == "2.00x"
    assert lines[-1].split("|")[-3].strip() == "-"  # GFLOP/s unknown for a bare ONNX file


def test_rich_table_shows_each_record(records):
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    console.print(report.render_table(records, title="t"))
    text = console.file.getvalue()
    assert "speed-up" in text and "0.80x" in text and "segnet.onnx" in text


def test_writers_are_atomic_and_refuse_a_missing_directory(records, tmp_path):
    suite = BenchSuite(records=records, environment={"cpu": "test"})
    path = report.write_json(suite, tmp_path / "r.json")
    data = json.loads(path.read_text())
    assert data["environment"] == {"cpu": "test"} and len(data["records"]) == 5
    report.write_csv(records, tmp_path / "r.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.json"]  # no temp files left
    with pytest.raises(UserInputError, match="does not exist"):
        report.write_csv(records, tmp_path / "missing" / "r.csv")


def test_plot_writes_a_png(records, tmp_path):
    pytest.importorskip("matplotlib")
    path = report.plot(records, tmp_path / "latency.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_refuses_an_unknown_image_type(records, tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(UserInputError, match=".png"):
        report.plot(records, tmp_path / "latency.bmpx")


def test_plot_without_matplotlib_is_a_missing_dependency(records, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" raise ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(MissingDependencyError, match="matplotlib"):
        report.plot(records, tmp_path / "latency.png")
    assert not (tmp_path / "latency.png").exists()
