"""Pixels from files: images (OpenCV), masks as class indices (Pillow), and palette files.

A mask is read with Pillow, which keeps a palette PNG's indices (OpenCV would expand them to colors),
and becomes class indices by its ``MaskReader``: the values themselves (grey or palette PNG), colors
mapped through a palette file (CamVid), or Cityscapes label ids mapped to the 19 train ids. Images
are decoded with OpenCV to 8-bit BGR. Both libraries come with the ``data`` extra and are imported
only when a file is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.errors import MissingDependencyError, UserInputError, first_line

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"})
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"})
DEFAULT_IGNORE_INDEX = 255
CITYSCAPES_TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
"""The label id of each of the 19 train ids (cityscapesScripts' labels.py); every other id is ignored."""


@dataclass(frozen=True)
class MaskReader:
    """How a mask file becomes an HxW array of class indices.

    Attributes:
        kind: ``index`` (grey or palette PNG: the values are the classes), ``color`` (RGB colors mapped by
            ``colors``) or ``cityscapes`` (label ids mapped to train ids).
        colors: for ``color``, the RGB color of each class, in class order.
        ignore_index: the value of pixels no class is scored on (Cityscapes' unused ids map to it).
    """

    kind: str = "index"
    colors: tuple[tuple[int, int, int], ...] = ()
    ignore_index: int = DEFAULT_IGNORE_INDEX

    def read(self, path: Path) -> np.ndarray:
        """The class indices of a mask file (uint8, or uint16 for 16-bit index PNGs).

        Raises:
            UserInputError: unreadable file, a color mask without a palette, a color not in the palette.
        """
        pixels = _read_mask_pixels(path, color=self.kind == "color")
        if self.kind == "cityscapes":
            return _cityscapes_lut(self.ignore_index)[_single_channel(pixels, path)]
        if self.kind == "color":
            return self._from_colors(pixels, path)
        return _single_channel(pixels, path)

    def _from_colors(self, pixels: np.ndarray, path: Path) -> np.ndarray:
        if pixels.ndim != 3 or pixels.shape[2] < 3:
            raise UserInputError(f"mask {path} is not a color image; the palette file maps RGB colors to classes")
        rgb = pixels[:, :, :3].astype(np.int32)
        keys = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
        table = np.array([(r << 16) | (g << 8) | b for r, g, b in self.colors], dtype=np.int32)
        order = np.argsort(table, kind="stable")
        found = np.searchsorted(table[order], keys).clip(0, len(table) - 1)
        known = table[order][found] == keys
        if not known.all():
            key = int(keys[~known][0])
            color = (key >> 16, (key >> 8) & 255, key & 255)
            raise UserInputError(f"mask {path} has the color {color}, which the palette file does not list")
        classes = order[found]
        return classes.astype(np.uint8 if len(table) <= 256 else np.uint16)


# --------------------------------------------------------------------------- palette files
def read_palette_file(path: Path) -> tuple[list[str | None], list[tuple[int, int, int]]]:
    """Class names and RGB colors, one class per row, in class order.

    Two forms: a CSV with a header naming ``r``, ``g``, ``b`` (and ``name``) columns, like CamVid's
    ``class_dict.csv``; or lines ``R G B [name]`` (``#`` starts a comment), like CamVid's ``label_colors.txt``.

    Raises:
        UserInputError: unreadable file, malformed rows, values outside 0..255, or a color listed twice.
    """
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except FileNotFoundError:
        raise UserInputError(f"palette file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserInputError(f"cannot read palette file {path}: {exc}") from None
    rows = [line for line in lines if line and not line.startswith("#")]
    names: list[str | None] = []
    colors: list[tuple[int, int, int]] = []
    header = [c.strip().lower() for c in rows[0].split(",")] if rows else []
    try:
        if {"r", "g", "b"} <= set(header):
            import csv

            for record in csv.DictReader(rows, fieldnames=header):
                if record is None or record.get("r", "").strip().lower() == "r":
                    continue
                colors.append((int(record["r"]), int(record["g"]), int(record["b"])))
                names.append((record.get("name") or "").strip() or None)
        else:
            for row in rows:
                parts = row.replace(",", " ").split()
                colors.append((int(parts[0]), int(parts[1]), int(parts[2])))
                names.append(" ".join(parts[3:]) or None)
    except (ValueError, IndexError, KeyError, TypeError):
        raise UserInputError(
            f"palette file {path} is malformed: expected a name,r,g,b CSV or lines 'R G B name'"
        ) from None
    if not colors:
        raise UserInputError(f"palette file {path} lists no colors")
    if any(not 0 <= v <= 255 for color in colors for v in color):
        raise UserInputError(f"palette file {path} has a color value outside 0..255")
    if len(set(colors)) != len(colors):
        twice = next(c for c in colors if colors.count(c) > 1)
        raise UserInputError(f"palette file {path} lists the color {twice} twice")
    return names, colors


# --------------------------------------------------------------------------- files
def read_image(path: Path) -> np.ndarray:
    """An image as 8-bit BGR (OpenCV's order; EXIF orientation applied; 16-bit scaled, alpha dropped).

    Raises:
        UserInputError: a missing or undecodable file.
        MissingDependencyError: no OpenCV.
    """
    cv2 = opencv()
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        if not Path(path).is_file():
            raise UserInputError(f"image {path} does not exist")
        raise UserInputError(f"cannot decode image {path}: not an image OpenCV reads, or truncated")
    return image


def _read_mask_pixels(path: Path, *, color: bool) -> np.ndarray:
    image_module = pillow()
    try:
        with image_module.open(path) as image:
            image.load()
            if color:  # a color mask stored as a palette PNG is still read by its colors
                pixels = np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
            elif image.mode in ("P", "L", "I;16", "I;16B", "I;16L", "I", "RGB", "RGBA", "LA"):
                pixels = np.asarray(image)  # a palette PNG gives its indices
            else:
                pixels = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise UserInputError(f"mask {path} does not exist") from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError... on corrupt files
        raise UserInputError(f"cannot read mask {path}: {first_line(exc)}") from None
    if pixels.dtype == np.int32:
        if pixels.min() < 0 or pixels.max() > 65535:
            raise UserInputError(f"mask {path} holds values outside 0..65535")
        pixels = pixels.astype(np.uint16)
    return pixels


def _single_channel(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    channels = pixels[:, :, : min(pixels.shape[2], 3)]
    if pixels.shape[2] == 2 or (channels == channels[:, :, :1]).all():
        return np.ascontiguousarray(pixels[:, :, 0])  # grey saved as RGB, or grey + alpha
    raise UserInputError(
        f"mask {path} is a color image: masks hold class indices (grey or palette PNG), "
        "or pass --palette FILE mapping colors to classes"
    )


_LUTS: dict[int, np.ndarray] = {}


def _cityscapes_lut(ignore_index: int) -> np.ndarray:
    if ignore_index not in _LUTS:
        dtype = np.uint8 if 0 <= ignore_index <= 255 else np.uint16
        lut = np.full(256, ignore_index, dtype=dtype)
        lut[list(CITYSCAPES_TRAIN_LABEL_IDS)] = np.arange(len(CITYSCAPES_TRAIN_LABEL_IDS))
        _LUTS[ignore_index] = lut
    return _LUTS[ignore_index]


def pillow() -> Any:
    """Pillow's ``Image`` module (masks keep their palette indices with it), or a one-line error."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError("reading and writing masks needs Pillow: pip install 'segdeploy[data]'") from None
    return Image


def opencv() -> Any:
    """The ``cv2`` module, or a one-line error naming the extra that brings it."""
    try:
        import cv2
    except ImportError:
        raise MissingDependencyError(
            "reading images and videos needs OpenCV: pip install 'segdeploy[data]' (opencv-python-headless)"
        ) from None
    return cv2
