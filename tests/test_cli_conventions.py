"""The CLI's conventions, held by every command: -o/--output is a path, --json a switch, --report PATH a file;
default names that do not collide; tables with the columns that apply; output that fits a log."""

from __future__ import annotations

import json
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from segdeploy.artifact import InputFormat, OutputKind, Precision, read_metadata
from segdeploy.cli import app
from segdeploy.cli.convert import _print_verification, default_onnx_name
from segdeploy.criteria import Criterion, ShapeComparison, thresholds_for
from segdeploy.verify import VerificationReport

runner = CliRunner()
SMALL_UNET = ["unet", "--config", "width_mult=0.125", "--input-shape", "1x3x32x32", "--num-classes", "3"]


def _options() -> list[tuple[str, tuple[str, ...], object]]:
    """(command, option names, value type) of every option of every command, read from the annotations."""
    found = []
    for command in app.registered_commands:
        hints = typing.get_type_hints(command.callback, include_extras=True)
        for hint in hints.values():
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            value_type, *extras = typing.get_args(hint)
            for info in extras:
                if isinstance(info, typer.models.OptionInfo):
                    names = tuple(
                        d for decl in (info.default, *info.param_decls) if isinstance(decl, str) for d in [decl]
                    )
                    found.append((command.name, names, value_type))
    return found


def test_every_commands_json_is_a_switch_and_output_and_report_are_paths():
    options = _options()
    json_flags = [(name, value_type) for name, names, value_type in options if "--json" in names]
    assert {name for name, _ in json_flags} >= {"models", "lint", "doctor", "bench", "verify"}
    assert all(value_type is bool for _, value_type in json_flags), json_flags
    paths = [
        (name, names, value_type) for name, names, value_type in options if {"-o", "--output", "--report"} & set(names)
    ]
    assert len({name for name, *_ in paths}) >= 5
    path_types = (Path, typing.Optional[Path], list[Path], typing.Optional[list[Path]])
    assert all(value_type in path_types for *_, value_type in paths), paths
    assert all("-o" in names for _, names, _ in paths if "--output" in names)


def test_export_output_is_the_path_written(tmp_path):
    out = tmp_path / "x.onnx"
    result = runner.invoke(app, ["export", *SMALL_UNET, "--no-verify", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and read_metadata(out).num_classes == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.onnx"]


def test_default_names_name_every_choice_that_is_not_the_default():
    assert default_onnx_name("unet", Precision.FP32, InputFormat.FLOAT32_NCHW, OutputKind.LOGITS).name == "unet.onnx"
    assert default_onnx_name("unet", Precision.FP16, InputFormat.FLOAT32_NCHW, OutputKind.LOGITS).name == (
        "unet.fp16.onnx"
    )
    names = {
        default_onnx_name("unet", precision, input_format, kind).name
        for precision in Precision
        for input_format in InputFormat
        for kind in OutputKind
    }
    assert len(names) == len(Precision) * len(InputFormat) * len(OutputKind)  # no two exports share a file


TINY = (
    "from torch import nn\n\n\n"
    "def build(num_classes=2, in_channels=3):\n    return nn.Conv2d(in_channels, num_classes, 1)\n"
)


def test_a_second_export_with_another_head_keeps_the_first_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.py").write_text(TINY)
    tiny = ["tiny.py:build", "--input-shape", "1x3x16x16", "--no-verify"]
    first = runner.invoke(app, ["export", *tiny])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["export", *tiny, "--input-format", "uint8-nhwc", "--output-kind", "classmap"])
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in tmp_path.glob("*.onnx")) == ["tiny.onnx", "tiny.uint8-nhwc.classmap.onnx"]
    assert read_metadata(tmp_path / "tiny.onnx").output is OutputKind.LOGITS
    again = runner.invoke(app, ["export", *tiny])
    assert again.exit_code == 0 and "replaced the file that was there" in again.output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("width_mult=abc", "bad option width_mult='abc' for model 'unet': expected a number"),
        ("widht_mult=0.5", "unknown option 'widht_mult' for model 'unet' (did you mean 'width_mult'?)"),
        ("num_classes=3", "num_classes is not a --config option: use --num-classes"),
        ("width_mult=-1", "width_mult must be positive"),
    ],
)
def test_bad_config_values_are_one_line_and_exit_2(tmp_path, value, message):
    result = runner.invoke(app, ["export", "unet", "--config", value, "-o", str(tmp_path / "u.onnx")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.strip()]
    assert errors == [f"error: {errors[0][7:]}"] and message in errors[0]
    assert not (tmp_path / "u.onnx").exists()


def _report(precision: str, criterion_shape: ShapeComparison) -> VerificationReport:
    criteria = thresholds_for(precision)
    return VerificationReport("ort-" + precision, "torch:unet", precision, criteria, [criterion_shape])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_fp16_and_int8_tables_leave_out_the_noise_floor_they_are_not_judged_by(capsys, precision):
    criterion = thresholds_for(precision).criterion
    result = ShapeComparison((1, 3, 64, 64), (1, 3, 64, 64), criterion, error=0.3, max_rel_error=0.002)
    _print_verification(_report(precision, result))
    header = capsys.readouterr().out
    assert "agreement" in header and "noise floor" not in header and "ratio" not in header


def test_fp32_table_shows_the_noise_floor_and_ratio(capsys):
    result = ShapeComparison((1, 3, 64, 64), (1, 3, 64, 64), Criterion.NOISE_FLOOR, error=2e-7, floor=1e-7)
    _print_verification(_report("fp32", result))
    out = capsys.readouterr().out
    assert "noise floor" in out and "2.00x" in out


def test_models_table_shows_each_models_options(monkeypatch):
    import segdeploy.models.summary

    row = {"name": "unet", "paper": "U-Net", "params": 31_000_000, "gflops": 386.0, "rewrites": [], "min_size": 32,
           "options": {"width_mult": 1.0, "batch_norm": True, "backbone": "resnet50"}}  # fmt: skip
    monkeypatch.setattr(segdeploy.models.summary, "summarize_models", lambda pattern, size: [row])
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    assert "width_mult=1.0, batch_norm=true, backbone=resnet50" in result.output


def test_models_listing_is_kept_and_a_second_listing_does_not_import_torch(tmp_path):
    env = {"SEGDEPLOY_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"}
    listing = [sys.executable, "-m", "segdeploy", "models", "unet*", "--json"]
    first = subprocess.run(listing, capture_output=True, text=True, env=env, check=True).stdout
    code = (
        "import sys; from segdeploy.cli import app\n"
        "try:\n    app(['models', 'unet*', '--json'])\nexcept SystemExit:\n    pass\n"
        "print('torch' in sys.modules, file=sys.stderr)"
    )
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert json.loads(second.stdout) == json.loads(first) and [r["name"] for r in json.loads(first)] == [
        "unet",
        "unetpp",
    ]
    assert second.stderr.strip() == "False"


def test_doctor_fits_a_log_when_piped(monkeypatch):
    import segdeploy.environment

    long = "no: " + "a very long reason that goes on " * 10
    monkeypatch.setattr(segdeploy.environment, "available_engines", lambda env: {"trt": long, "ort": "yes (cpu)"})
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    assert max(len(line) for line in result.output.splitlines()) <= 100
    assert "goes on" in result.output
