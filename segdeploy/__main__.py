"""``python -m segdeploy``: the command line."""

from segdeploy.cli import main

main()
