"""What every command shares: the Typer app, one-line errors with exit codes, consoles, option parsers."""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from segdeploy._version import __version__
from segdeploy.errors import EXIT_CODES_HELP, SegdeployError, UserInputError

app = typer.Typer(
    name="segdeploy",
    help="Semantic-segmentation networks from PyTorch to ONNX and TensorRT.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int) -> typer.Exit:
    if _state["verbose"]:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def guarded(fn: F) -> F:
    """Map segdeploy errors to one line + exit code; anything else is an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except SegdeployError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except Exception as exc:  # a bug: still one line unless --verbose
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise fail(f"internal error: {type(exc).__name__}: {first} (rerun with --verbose for details)", 1) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"segdeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")] = False,
) -> None:
    _state["verbose"] = verbose


def make_console(stderr: bool = False, *, log_width: int = 400) -> Any:
    """A rich console; when not a terminal (a log, CI), ``log_width`` columns wide.

    The default is wide enough that tables of names and numbers are never cut; tables of free text fold
    their long cells (``overflow="fold"``) and pass a log's width (``LOG_WIDTH``) instead.
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr) if stream.isatty() else Console(stderr=stderr, width=log_width)


LOG_WIDTH = 100
"""Columns of free-text tables written to a log."""


def parse_config(items: list[str] | None) -> dict[str, Any]:
    """``["backbone=resnet101", "width_mult=0.5"]`` -> ``{"backbone": "resnet101", "width_mult": 0.5}``.

    Values are JSON where they parse (numbers, booleans, lists), else strings; the model's builder checks
    them against its options (``segdeploy.models.create_model``).
    """
    config: dict[str, Any] = {}
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"bad --config {item!r}: expected key=value, e.g. backbone=resnet101")
        key = key.strip()
        if key in ("num_classes", "in_channels"):
            raise UserInputError(f"{key} is not a --config option: use --{key.replace('_', '-')}")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word: a string option
        config[key] = value
    return config


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise UserInputError(
            f"bad {what} {text!r}: expected numbers separated by commas, e.g. 0.485,0.456,0.406"
        ) from None


def write_json(path: Path, data: Any) -> None:
    from segdeploy.fileio import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def print_json(data: Any) -> None:
    """``--json``: the command's result as JSON on stdout."""
    typer.echo(json.dumps(data, indent=2))


# --------------------------------------------------------------------------- options shared by several commands
# Conventions: -o/--output is always an output path; --json prints JSON to stdout; --report PATH writes a file.
ConfigOption = Annotated[
    Optional[list[str]],
    typer.Option("--config", "-c", help="Builder option key=value, repeatable (see `segdeploy models`)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON to stdout instead of tables.")]
ReportOption = Annotated[Optional[Path], typer.Option("--report", metavar="PATH", help="Write the results as JSON.")]
WeightsOption = Annotated[Optional[Path], typer.Option("--weights", help="Checkpoint to load (weights only).")]
CalibOption = Annotated[
    Optional[Path],
    typer.Option(
        "--calib",
        help="INT8: a directory of images, a dataset split as eval --data names it (voc:ROOT:train, "
        "cityscapes:ROOT:train, camvid:ROOT:train) or an .npy of NCHW float32 batches.",
    ),
]
CalibSizeOption = Annotated[int, typer.Option("--calib-size", help="INT8: the most calibration images used.")]
