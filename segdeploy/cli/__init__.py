"""The ``segdeploy`` command line: thin commands over the library.

Every command body imports the library lazily (``--help`` must not import
torch) and raises ``SegdeployError`` for problems the user can fix; the
``guarded`` wrapper (``common``) turns those into one line on stderr and an exit code.
Commands live by stage: ``convert`` (models, export, verify, lint), ``deploy``
(build, bundle, doctor), ``bench``, ``data`` (predict, eval).
"""

from __future__ import annotations

# Importing a command module registers its commands; this order is the order of `segdeploy --help`.
from segdeploy.cli import (
    bench,  # noqa: F401
    convert,  # noqa: F401
    data,  # noqa: F401
    deploy,  # noqa: F401
)
from segdeploy.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
