"""Where a bundle is written: checked before any work, built aside, put in place whole.

- A new directory: built in a hidden temporary directory beside it, renamed into place at the end.
- An existing empty directory (a mount point, a container volume, ``-o .`` in an empty directory): built
  in a hidden temporary directory inside it, whose entries are moved up at the end, the manifest last.
- An existing non-empty directory with ``force``: built beside it, then swapped in; the old one is
  removed only once the new one is in place. A mount point cannot be swapped and is refused.

Temporary directories carry the writer's process id. One left by a killed run (its process is gone) is
removed by the next run, and is not counted when deciding whether a directory is empty.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from segdeploy.errors import UserInputError

_TAG = "segdeploy-bundle"
_LEFTOVER = re.compile(rf"^\.(?:.*\.)?{_TAG}-(\d+)-[^/]*\.(?:tmp|old)$")


@dataclass(frozen=True)
class Target:
    """A checked output location: ``path`` as given, ``resolved``, and how it is written (``new``, ``fill``,
    ``replace``)."""

    path: Path
    resolved: Path
    mode: str


def check_target(out_dir: str | os.PathLike[str], force: bool, inputs: list[Path]) -> Target:
    """Decide how ``out_dir`` is written, refusing what cannot work before any work is done.

    Raises:
        UserInputError: a missing or unwritable parent, a file in the way, a non-empty directory without
            ``force``, or a replacement that would delete the working directory, an input or a mount point.
    """
    path = Path(out_dir)
    resolved = path.resolve()
    if resolved.exists() and not resolved.is_dir():
        raise UserInputError(f"cannot write bundle {path}: it exists and is not a directory")
    if not resolved.exists():
        if not resolved.parent.is_dir():
            raise UserInputError(f"cannot write bundle {path}: directory {resolved.parent} does not exist")
        _require_writable(resolved.parent, path)
        return Target(path, resolved, "new")
    remove_leftovers(resolved)
    if not any(resolved.iterdir()):
        _require_writable(resolved, path)
        return Target(path, resolved, "fill")
    if not force:
        raise UserInputError(f"{path} exists and is not empty: pick another directory or pass --force")
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise UserInputError(f"cannot replace {path}: it is the current directory or holds it")
    for item in inputs:
        if item.exists() and resolved in item.resolve().parents:
            raise UserInputError(f"cannot replace {path}: it holds the input {item}; copy it elsewhere first")
    if os.path.ismount(resolved):
        raise UserInputError(
            f"cannot replace {path}: it is a mount point; empty it (the bundle is then written into it) "
            "or write to a new directory inside it"
        )
    _require_writable(resolved.parent, path)
    return Target(path, resolved, "replace")


@contextmanager
def building(target: Target) -> Iterator[Path]:
    """A temporary directory to fill; put in place as ``target`` when the block ends without an error.

    Raises:
        UserInputError: the file system refuses a write (permissions, space), in one line.
    """
    where = target.resolved if target.mode == "fill" else target.resolved.parent
    remove_leftovers(where)
    prefix = "." if target.mode == "fill" else f".{target.resolved.name}."
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{prefix}{_TAG}-{os.getpid()}-", suffix=".tmp", dir=where))
    except OSError as exc:
        raise UserInputError(f"cannot write bundle {target.path}: {exc.strerror or exc}") from None
    try:
        try:
            yield tmp
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; give it a plain mkdir's mode
            _put_in_place(tmp, target)
        except OSError as exc:
            raise UserInputError(f"cannot write bundle {target.path}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _put_in_place(tmp: Path, target: Target) -> None:
    if target.mode == "new":
        os.rename(tmp, target.resolved)
    elif target.mode == "fill":
        from segdeploy.bundle.manifest import MANIFEST

        entries = sorted(tmp.iterdir(), key=lambda p: p.name == MANIFEST)  # the manifest last: complete or absent
        for entry in entries:
            os.rename(entry, target.resolved / entry.name)
    else:
        old = Path(
            tempfile.mkdtemp(
                prefix=f".{target.resolved.name}.{_TAG}-{os.getpid()}-", suffix=".old", dir=target.resolved.parent
            )
        )
        old.rmdir()
        os.rename(target.resolved, old)
        try:
            os.rename(tmp, target.resolved)
        except BaseException:
            os.rename(old, target.resolved)
            raise
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(directory: Path) -> None:
    """Remove temporary directories of bundle runs whose process no longer exists."""
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match and entry.is_dir() and not entry.is_symlink() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _require_writable(directory: Path, path: Path) -> None:
    """Probe with a real directory: permission bits, read-only mounts and ACLs all answer the same way."""
    try:
        probe = tempfile.mkdtemp(prefix=f".{_TAG}-{os.getpid()}-", suffix=".tmp", dir=directory)
    except OSError as exc:
        why = exc.strerror or exc
        raise UserInputError(f"cannot write bundle {path}: {directory} is not writable ({why})") from None
    os.rmdir(probe)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
