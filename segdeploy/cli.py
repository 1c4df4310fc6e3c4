"""The ``segdeploy`` command line: thin commands over the library.

Every command body imports the library lazily (``--help`` must not import
torch) and raises ``SegdeployError`` for problems the user can fix; the
``_guarded`` wrapper turns those into one line on stderr and an exit code.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer

from segdeploy._version import __version__
from segdeploy.errors import EXIT_CODES_HELP, SegdeployError

app = typer.Typer(
    name="segdeploy",
    help="Semantic-segmentation networks from PyTorch to ONNX and TensorRT.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"verbose": False}
F = TypeVar("F", bound=Callable[..., Any])


def _fail(message: str, code: int) -> typer.Exit:
    if _state["verbose"]:
        traceback.print_exc()
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _guarded(fn: F) -> F:
    """Map segdeploy errors to one line + exit code; anything else is an internal error."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except SegdeployError as exc:
            raise _fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise _fail("interrupted", 130) from None
        except Exception as exc:  # a bug: still one line unless --verbose
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise _fail(f"internal error: {type(exc).__name__}: {first} (rerun with --verbose for details)", 1) from None

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


def _console():  # rich console on stdout, imported lazily
    from rich.console import Console

    return Console()


# --------------------------------------------------------------------------- models
@app.command("models")
@_guarded
def models_cmd(
    pattern: Annotated[str, typer.Argument(help="Shell-style filter on names.")] = "*",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    size: Annotated[int, typer.Option(help="Input side for the GFLOPs column.")] = 512,
) -> None:
    """List the zoo: paper, parameters, GFLOPs and the export rewrites each model needs."""
    import json

    from segdeploy.models.summary import summarize_models

    rows = summarize_models(pattern, size=size)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title=f"segdeploy model zoo (GFLOPs at {size}x{size}, 21 classes)")
    for col in ("name", "paper", "params (M)", "GFLOPs", "rewrites"):
        table.add_column(col, justify="right" if col in ("params (M)", "GFLOPs") else "left")
    for r in rows:
        table.add_row(r["name"], r["paper"], f"{r['params'] / 1e6:.1f}", f"{r['gflops']:.1f}", ", ".join(r["rewrites"]) or "-")
    _console().print(table)


# --------------------------------------------------------------------------- export / verify / lint
# (export helper and verify helper fill these sections)

# --------------------------------------------------------------------------- build / doctor
# (TensorRT helper fills this section)

# --------------------------------------------------------------------------- bench
# (bench helper fills this section)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    sys.exit(main())
