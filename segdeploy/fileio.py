"""Atomic file output (a file appears complete under its name or not at all), and where cached files live."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from segdeploy.errors import UserInputError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it
    was, so a later pipeline step never picks up a half-written file.

    Raises:
        UserInputError: the target directory is missing or not writable.
    """
    target = check_output_path(path)
    directory = target.parent
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise UserInputError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that ``path`` can be written: its directory exists and it is no directory.

    Raises:
        UserInputError: the directory is missing or ``path`` is a directory.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise UserInputError(f"cannot write {target}: directory {target.parent} does not exist")
    if target.is_dir():
        raise UserInputError(f"cannot write {target}: it is a directory")
    return target


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and return the path."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where segdeploy keeps cached files: ``cache_dir``, else ``$SEGDEPLOY_CACHE``, else ``~/.cache/segdeploy``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("SEGDEPLOY_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "segdeploy"
