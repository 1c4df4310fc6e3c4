"""Calibration data as the export's input expects it: a directory of images, a dataset split (the
specification ``segdeploy eval --data`` takes: ``voc:ROOT:train``, ``cityscapes:ROOT:train``,
``camvid:ROOT:train``), or an .npy of preprocessed batches."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segdeploy.artifact import IMAGENET_MEAN, IMAGENET_STD
from segdeploy.datasets import DatasetSpec, list_images
from segdeploy.errors import MissingDependencyError, UserInputError, first_line
from segdeploy.quantize.common import DEFAULT_CALIB_SIZE

CALIBRATION_SPLIT = "train"
"""The split a dataset specification without one calibrates on (eval scores another: val)."""


def load_calibration(
    path: str | os.PathLike[str],
    *,
    shape: Sequence[int],
    in_channels: int,
    calib_size: int = DEFAULT_CALIB_SIZE,
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    normalize: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Calibration inputs from a directory of images, a dataset split, or an ``.npy`` of preprocessed batches.

    Images (a directory's sorted by file name, the first ``calib_size``; a dataset split's
    ``calib_size`` spread evenly over the split, so that they are not all from one city or
    sequence) are read with Pillow,
    resized to ``shape`` (bilinear), scaled to [0, 1] and normalised with
    ``(x - mean) / std`` per channel, or with ``normalize`` (which gets float32
    ``[C, H, W]`` in [0, 1] and returns the model's input for that image). An
    ``.npy`` must hold float32 ``[N, C, H, W]`` already preprocessed; it is
    loaded without pickles and its first ``calib_size`` images are used.

    Args:
        path: a directory of images, ``voc:ROOT[:SPLIT]``, ``cityscapes:ROOT[:SPLIT]``,
            ``camvid:ROOT[:SPLIT]`` (split default ``train``; masks are not needed), or an ``.npy`` file.
        shape: ``(H, W)`` the images are resized to (the export's trace size).
        in_channels: channels the model takes; images must have exactly that many.
        calib_size: the most images to use (at least 1).
        mean, std: per-channel statistics (length 1 or ``in_channels``); default the
            ImageNet ones for 3 channels, their averages for 1 channel.
        normalize: replaces ``mean``/``std`` when given.

    Returns:
        float32 ``[n, C, H, W]``, ``1 <= n <= calib_size``.

    Raises:
        UserInputError: missing path, no images, an unreadable image, the wrong channel
            count, or an ``.npy`` of the wrong rank, channels or dtype.
        MissingDependencyError: a directory of images but no Pillow.
    """
    if calib_size < 1:
        raise UserInputError(f"calibration size must be at least 1 (got {calib_size})")
    if in_channels < 1:
        raise UserInputError(f"in_channels must be positive (got {in_channels})")
    if len(shape) != 2 or any(int(s) < 1 for s in shape):
        raise UserInputError(f"calibration image size must be (height, width), got {tuple(shape)}")
    source = Path(path)
    size = (int(shape[0]), int(shape[1]))
    if not source.exists():
        spec = DatasetSpec.parse(str(path), default_split=CALIBRATION_SPLIT)
        if spec.layout == "images":
            raise UserInputError(
                f"calibration data {source} does not exist; pass a directory of images, a dataset split "
                "(voc:ROOT:train, cityscapes:ROOT:train, camvid:ROOT:train) or an .npy file"
            )
        files = [sample.image for sample in spec.open(need_masks=False).spread(calib_size)]
        return _load_images(files, size, in_channels, mean, std, normalize)
    if source.is_dir():
        return _load_image_dir(source, size, in_channels, calib_size, mean, std, normalize)
    if source.suffix.lower() == ".npy":
        return _load_npy(source, in_channels, calib_size)
    raise UserInputError(f"calibration data {source} is neither a directory of images nor an .npy file")


def _load_npy(path: Path, in_channels: int, calib_size: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r")
    except Exception as exc:  # truncated, not an .npy at all, or an object array (needs pickles: refused)
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise UserInputError(
                f"calibration file {path} holds Python objects; it is not loaded with pickles"
            ) from None
        raise UserInputError(f"calibration file {path} is not a readable .npy array: {first_line(exc)}") from None
    if not isinstance(array, np.ndarray):
        raise UserInputError(f"calibration file {path} holds no single array (an .npz?); save one float32 NCHW array")
    if array.dtype != np.float32:
        raise UserInputError(f"calibration file {path} is {array.dtype}; expected preprocessed float32 NCHW")
    if array.ndim != 4:
        raise UserInputError(f"calibration file {path} has shape {tuple(array.shape)}; expected rank 4 (N, C, H, W)")
    if array.shape[1] != in_channels:
        raise UserInputError(
            f"calibration file {path} has {array.shape[1]} channels (shape {tuple(array.shape)}); "
            f"the model takes {in_channels}"
        )
    if min(array.shape) < 1:
        raise UserInputError(f"calibration file {path} is empty (shape {tuple(array.shape)})")
    data = np.ascontiguousarray(array[:calib_size], dtype=np.float32)
    if not np.isfinite(data).all():
        raise UserInputError(f"calibration file {path} holds NaN or infinite values")
    return data


def _load_image_dir(
    directory: Path,
    size: tuple[int, int],
    in_channels: int,
    calib_size: int,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    normalize: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    files = list_images(directory, unique_stems=False)
    return _load_images(files[:calib_size], size, in_channels, mean, std, normalize)


def _load_images(
    files: Sequence[Path],
    size: tuple[int, int],
    in_channels: int,
    mean: float | Sequence[float] | None,
    std: float | Sequence[float] | None,
    normalize: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependencyError(
            "reading calibration images needs Pillow: pip install 'segdeploy[int8]', or pass an .npy of "
            "preprocessed float32 NCHW batches"
        ) from None
    if normalize is None:
        mean_arr, std_arr = _statistics(mean, std, in_channels)
    height, width = size
    images = []
    for file in files:
        pixels = _read_image(Image, file, (width, height), in_channels)
        if normalize is None:
            image = (pixels - mean_arr) / std_arr
        else:
            image = np.asarray(normalize(pixels), dtype=np.float32)
            if image.shape != (in_channels, height, width):
                raise UserInputError(
                    f"the normalize function returned shape {image.shape} for {file.name}; "
                    f"expected {(in_channels, height, width)}"
                )
        images.append(image.astype(np.float32))
    return np.stack(images)


def _read_image(image_module: Any, file: Path, size: tuple[int, int], in_channels: int) -> np.ndarray:
    """One image as float32 ``[C, H, W]`` in [0, 1], resized to ``size`` (width, height)."""
    try:
        with image_module.open(file) as image:
            image.load()
            if image.mode == "P":  # a palette is a storage format for colour
                image = image.convert("RGBA" if "transparency" in image.info else "RGB")
            mode = image.mode
            channels = len(image.getbands())
            if channels != in_channels:
                raise UserInputError(
                    f"calibration image {file} has {channels} channel(s) ({mode}); the model takes {in_channels}"
                )
            if mode in ("1", "L", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "LAB", "HSV"):
                scale = 255.0
                bands = [image] if channels == 1 else list(image.split())
                if mode == "1":
                    bands = [image.convert("L")]
            elif mode.startswith("I;16"):
                scale = 65535.0
                bands = [image.convert("I")]
            else:
                raise UserInputError(f"calibration image {file} has pixel format {mode}; use 8- or 16-bit images")
            resized = [
                np.asarray(band.convert("F").resize(size, image_module.Resampling.BILINEAR), dtype=np.float32)
                for band in bands
            ]
    except UserInputError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... on corrupt files
        raise UserInputError(f"cannot read calibration image {file}: {first_line(exc)}") from None
    return np.stack(resized) / scale


def _statistics(
    mean: float | Sequence[float] | None, std: float | Sequence[float] | None, in_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    if mean is None and std is None:
        if in_channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        elif in_channels == 1:
            mean, std = (float(np.mean(IMAGENET_MEAN)),), (float(np.mean(IMAGENET_STD)),)
        else:
            raise UserInputError(f"a {in_channels}-channel model needs explicit mean and std for its images")
    elif mean is None or std is None:
        raise UserInputError("give both mean and std, or neither")
    mean_arr = np.asarray(mean, np.float32).reshape(-1)
    std_arr = np.asarray(std, np.float32).reshape(-1)
    for name, values in (("mean", mean_arr), ("std", std_arr)):
        if values.size not in (1, in_channels):
            raise UserInputError(f"{name} has {values.size} values; the model takes {in_channels} channels")
    if not (std_arr > 0).all():
        raise UserInputError(f"std must be positive, got {std_arr.tolist()}")
    return mean_arr.reshape(-1, 1, 1), std_arr.reshape(-1, 1, 1)
