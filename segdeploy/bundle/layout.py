"""Names, labels, colors and the file listing of a bundle."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from segdeploy.bundle.manifest import MANIFEST
from segdeploy.errors import UserInputError

TRITON_DEFAULT_MAX_BATCH = 8
"""max_batch_size of the Triton configs when no TensorRT profile bounds the batch."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_name(name: str) -> str:
    """A model name fit for a directory and a Triton model: letters, digits, ``_``, ``.``, ``-``.

    Raises:
        UserInputError: anything else.
    """
    if not _NAME.match(name) or name.endswith("_trt"):
        raise UserInputError(
            f"bad bundle name {name!r}: use letters, digits, '_', '.' or '-' (not ending in '_trt'), "
            "up to 100 characters"
        )
    return name


def default_name(onnx_path: Path) -> str:
    """The ONNX file's stem made into a valid name (``unet.fp16.onnx`` -> ``unet_fp16``)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", onnx_path.stem).strip("_-") or "model"
    name = name if name[0].isalnum() else f"m{name}"
    return name[:-4] + "_model" if name.endswith("_trt") else name[:100]


def default_labels(num_classes: int) -> list[str]:
    return [f"class_{i}" for i in range(num_classes)]


def read_labels(path: Path, num_classes: int) -> list[str]:
    """One label per line (trailing blank lines ignored), exactly ``num_classes`` of them.

    Raises:
        UserInputError: unreadable file, blank or duplicate labels, or a count that is not ``num_classes``.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserInputError(f"labels file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read labels file {path}: {exc}") from None
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if len(labels) != num_classes:
        raise UserInputError(f"{path} has {len(labels)} labels but the model has {num_classes} classes")
    blank = [i + 1 for i, label in enumerate(labels) if not label]
    if blank:
        raise UserInputError(f"{path} line {blank[0]} is blank: one label per line")
    if len(set(labels)) != len(labels):
        duplicate = next(label for label in labels if labels.count(label) > 1)
        raise UserInputError(f"{path} lists label {duplicate!r} twice")
    return labels


def palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` RGB colors: the PASCAL VOC color map (black, then colors spread by the bits of the index).

    Its first 256 colors are distinct; beyond that the map repeats.
    """
    colors = []
    for index in range(count):
        c, r, g, b = index % 256, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colors.append((r, g, b))
    return colors


def walk(root: Path) -> tuple[list[str], list[str]]:
    """Every entry under ``root`` without following links: ``(regular files, others)`` as relative '/' paths.

    ``others`` are symlinks (to files or directories, which are not entered), FIFOs, sockets and devices:
    none of them survives ``cp -r``, ``tar`` or a container ``COPY`` as the same bytes.
    """
    files: list[str] = []
    others: list[str] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        base = Path(directory)
        for name in sorted(dirnames + filenames):
            path = base / name
            mode = os.lstat(path).st_mode
            relative = path.relative_to(root).as_posix()
            if stat.S_ISREG(mode):
                files.append(relative)
            elif not stat.S_ISDIR(mode):
                others.append(relative)
        dirnames[:] = sorted(d for d in dirnames if stat.S_ISDIR(os.lstat(base / d).st_mode))
    return sorted(files), sorted(others)


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` except the manifest, keyed by relative path with '/', sorted."""
    from segdeploy.fileio import sha256_file

    return {path: sha256_file(root / path) for path in walk(root)[0] if path != MANIFEST}
