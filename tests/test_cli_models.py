"""``segdeploy models``, ``--version`` and the promise that the CLI front door never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import ZOO
from typer.testing import CliRunner

from segdeploy import __version__
from segdeploy.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def zoo_rows() -> list[dict]:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_models_json_lists_all_thirteen_with_size_and_cost(zoo_rows: list[dict]):
    assert {row["name"] for row in zoo_rows} == set(ZOO)
    for row in zoo_rows:
        assert row["paper"], row["name"]
        assert isinstance(row["params"], int) and row["params"] > 1_000_000, row["name"]
        assert row["gflops"] > 1.0, row["name"]
        assert isinstance(row["rewrites"], list), row["name"]


def test_models_json_names_the_rewrites_each_model_needs(zoo_rows: list[dict]):
    rewrites = {row["name"]: row["rewrites"] for row in zoo_rows}
    assert "max_unpool" in rewrites["segnet"]
    assert rewrites["unet"] == rewrites["unetpp"] == rewrites["u2net"] == []


def test_models_json_counts_full_size_models(zoo_rows: list[dict]):
    # the table shows the default 21-class models, not the small test configs
    params = {row["name"]: row["params"] for row in zoo_rows}
    assert abs(params["fcn8s"] / 1e6 - 134.5) <= 0.05
    assert params["u2net"] > 40_000_000


def test_models_table_prints_every_name(zoo_rows: list[dict], monkeypatch: pytest.MonkeyPatch):
    # Reuse the rows the JSON test computed (same library call, about 20 s on 2 cores):
    # this test is about the table rendering every row.
    import segdeploy.models.summary

    monkeypatch.setattr(segdeploy.models.summary, "summarize_models", lambda pattern, size: zoo_rows)
    result = runner.invoke(app, ["models"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert all(name in result.stdout for name in ZOO)
    assert "max_unpool" in result.stdout


def test_models_pattern_filters_names():
    result = runner.invoke(app, ["models", "unet*", "--json"])
    assert result.exit_code == 0, result.output
    assert [row["name"] for row in json.loads(result.stdout)] == ["unet", "unetpp"]


def test_models_unknown_pattern_gives_empty_list():
    result = runner.invoke(app, ["models", "no-such-model*", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_version_prints_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"segdeploy {__version__}"


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)


def test_import_segdeploy_does_not_import_torch():
    proc = _run_python("import sys, segdeploy; assert 'torch' not in sys.modules, 'torch was imported'")
    assert proc.returncode == 0, proc.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from segdeploy.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'models' in result.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr


def test_models_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from segdeploy.cli import app\n"
        "result = CliRunner().invoke(app, ['models', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = _run_python(code)
    assert proc.returncode == 0, proc.stderr


def test_models_json_lists_each_builders_options_with_defaults(zoo_rows: list[dict]):
    options = {row["name"]: row["options"] for row in zoo_rows}
    assert options["pspnet"]["backbone"] == "resnet50" and options["pspnet"]["bins"] == [1, 2, 3, 6]
    assert options["deeplabv3"]["output_stride"] == 16
    assert all("width_mult" in opts for opts in options.values())
    assert all("num_classes" not in opts and "in_channels" not in opts for opts in options.values())
