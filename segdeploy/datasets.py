"""Labeled image sets: the layouts segdeploy reads and how images pair with masks.

A dataset is a list of ``Sample`` (a stem, an image path, a mask path) and the ``MaskReader``
(``segdeploy.pixels``) that turns its mask files into class indices. The layouts:

- stem-matched directories (``--images DIR --masks DIR``): ``masks/<stem>.png`` for ``images/<stem>.*``;
  a mask is a single-channel PNG of class indices or a palette PNG whose indices are the classes, or,
  with a palette file, a color PNG (CamVid's style);
- PASCAL VOC (``voc:ROOT:SPLIT``): ``ImageSets/Segmentation/SPLIT.txt``, ``JPEGImages``, ``SegmentationClass``
  (palette PNGs, 255 on object borders);
- Cityscapes (``cityscapes:ROOT:SPLIT``): ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
  ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``, label ids mapped to the 19 train ids (the rest ignored);
- CamVid (``camvid:ROOT:SPLIT``): ``SPLIT/`` with ``SPLIT_labels/<stem>_L.png`` color masks and
  ``class_dict.csv`` (name,r,g,b), or ``SPLITannot/`` index masks.

Only paths are listed here; pixels are read when a sample is used (``segdeploy.pixels``), so a
dataset of any size costs no memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from segdeploy.errors import UserInputError
from segdeploy.pixels import (
    DEFAULT_IGNORE_INDEX,
    IMAGE_SUFFIXES,
    MaskReader,
    read_palette_file,
)

LAYOUTS = ("voc", "cityscapes", "camvid")

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One image and, for a labeled set, its mask; ``stem`` names every output made from it."""

    stem: str
    image: Path
    mask: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """Samples in a fixed order, how to read their masks, and the class names the layout knows."""

    description: str
    samples: tuple[Sample, ...]
    masks: MaskReader | None = None
    labels: tuple[str, ...] | None = None
    colors: tuple[tuple[int, int, int], ...] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def spread(self, count: int) -> list[Sample]:
        """``count`` samples spread evenly over the set (all of them when it holds fewer)."""
        n = len(self.samples)
        if count >= n:
            return list(self.samples)
        return [self.samples[i * n // count] for i in range(count)]


@dataclass(frozen=True)
class DatasetSpec:
    """What the user named: stem-matched directories, a directory of images, or a layout with a split.

    Attributes:
        layout: ``pairs``, ``images``, ``voc``, ``cityscapes`` or ``camvid``.
        root: the images directory (``pairs``, ``images``) or the dataset root.
        masks: the masks directory (``pairs``).
        split: the split of a layout.
        palette: a palette file for color masks (CamVid's ``class_dict.csv`` by default).
    """

    layout: str
    root: Path
    masks: Path | None = None
    split: str | None = None
    palette: Path | None = None

    @classmethod
    def parse(cls, text: str, *, default_split: str) -> DatasetSpec:
        """``voc:ROOT[:SPLIT]``, ``cityscapes:ROOT[:SPLIT]``, ``camvid:ROOT[:SPLIT]`` or a directory of images.

        Raises:
            UserInputError: an unknown layout name before the colon.
        """
        if Path(text).exists():
            return cls("images", Path(text))
        layout, sep, rest = text.partition(":")
        if not sep or layout.lower() not in LAYOUTS:
            if sep and len(layout) > 1 and "/" not in layout:
                raise UserInputError(f"unknown dataset layout {layout!r} in {text!r}: use {', '.join(LAYOUTS)}")
            return cls("images", Path(text))
        root, split = rest, default_split
        head, sep, tail = rest.rpartition(":")
        if sep and tail and "/" not in tail and not Path(rest).exists():
            root, split = head, tail
        return cls(layout.lower(), Path(root), split=split)

    def open(self, *, ignore_index: int = DEFAULT_IGNORE_INDEX, need_masks: bool = True) -> Dataset:
        """List the samples (paths only).

        Raises:
            UserInputError: missing directories or split files, no samples, images without masks.
        """
        if self.layout == "images":
            return Dataset(f"images in {self.root}", tuple(Sample(p.stem, p) for p in list_images(self.root)))
        if self.layout == "pairs":
            assert self.masks is not None
            reader = _reader_for_palette(self.palette, ignore_index)
            colors = reader.colors or None
            samples = pair_by_stem(self.root, self.masks)
            names = _palette_names(self.palette) if self.palette else None
            return Dataset(f"{self.root} with masks {self.masks}", samples, reader, names, colors)
        if self.layout == "voc":
            return voc(self.root, self.split or "val", need_masks=need_masks)
        if self.layout == "cityscapes":
            return cityscapes(self.root, self.split or "val", ignore_index=ignore_index, need_masks=need_masks)
        if self.layout == "camvid":
            return camvid(
                self.root, self.split or "val", self.palette, ignore_index=ignore_index, need_masks=need_masks
            )
        raise UserInputError(f"unknown dataset layout {self.layout!r}: use {', '.join(LAYOUTS)}")


# --------------------------------------------------------------------------- listing and pairing
def list_images(directory: Path, *, unique_stems: bool = True) -> list[Path]:
    """The image files directly in ``directory``, sorted by name.

    Args:
        directory: where the images are.
        unique_stems: refuse two images with one stem (pairs are matched by stem).

    Raises:
        UserInputError: not a directory, or no images in it.
    """
    if not directory.is_dir():
        raise UserInputError(f"{directory} is not a directory of images")
    try:
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as exc:
        raise UserInputError(f"cannot read {directory}: {exc.strerror or exc}") from None
    if not files:
        raise UserInputError(f"{directory} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    if unique_stems:
        _check_unique_stems(files)
    return files


def pair_by_stem(images: Path, masks: Path, mask_suffix: str = "") -> tuple[Sample, ...]:
    """Each image of ``images`` with ``masks/<stem><mask_suffix>.png`` (or another image suffix).

    Raises:
        UserInputError: a directory is missing, or an image has no mask (the count and the first named).
    """
    image_files = list_images(images)
    if not masks.is_dir():
        raise UserInputError(f"masks directory {masks} does not exist")
    by_stem = {p.stem: p for p in masks.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    samples, missing = [], []
    for image in image_files:
        mask = by_stem.get(image.stem + mask_suffix)
        if mask is None:
            missing.append(image.name)
        else:
            samples.append(Sample(image.stem, image, mask))
    if missing:
        raise UserInputError(
            f"{len(missing)} of {len(image_files)} images in {images} have no mask in {masks} "
            f"(e.g. {missing[0]} needs {Path(missing[0]).stem}{mask_suffix}.png); masks pair with images by stem"
        )
    return tuple(samples)


def _check_unique_stems(files: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for file in files:
        if file.stem in seen:
            raise UserInputError(f"{seen[file.stem]} and {file} share the stem {file.stem!r}: outputs would collide")
        seen[file.stem] = file


# --------------------------------------------------------------------------- layouts
def voc(root: Path, split: str, *, need_masks: bool = True) -> Dataset:
    """PASCAL VOC segmentation: ``ROOT`` is ``VOCdevkit/VOC2012`` (or the ``VOCdevkit`` above it).

    Raises:
        UserInputError: the layout is not there, the split is unknown, or a listed file is missing.
    """
    if not (root / "ImageSets").is_dir() and root.is_dir():
        years = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("VOC"))
        root = years[-1] if years else root
    split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise UserInputError(
            f"{root} is not a VOC root with split {split!r}: {split_file} is missing "
            f"({_available(split_file.parent, '.txt')})"
        )
    ids = [line.split()[0] for line in split_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    samples = []
    for name in ids:
        image = root / "JPEGImages" / f"{name}.jpg"
        mask = root / "SegmentationClass" / f"{name}.png"
        _require(image, "VOC image")
        if need_masks:
            _require(mask, "VOC mask")
        samples.append(Sample(name, image, mask))
    if not samples:
        raise UserInputError(f"{split_file} lists no images")
    return Dataset(f"VOC {root.name} {split}", tuple(samples), MaskReader("index"), VOC_CLASSES)


def cityscapes(root: Path, split: str, *, ignore_index: int = DEFAULT_IGNORE_INDEX, need_masks: bool = True) -> Dataset:
    """Cityscapes fine annotations, label ids mapped to the 19 train ids (every other id ignored).

    Raises:
        UserInputError: the layout is not there, the split is unknown, or an image has no labelIds mask.
    """
    images_dir = root / "leftImg8bit" / split
    if not images_dir.is_dir():
        raise UserInputError(
            f"{root} is not a Cityscapes root with split {split!r}: {images_dir} is missing "
            f"({_available(root / 'leftImg8bit', '')})"
        )
    suffix = "_leftImg8bit"
    images = sorted(images_dir.glob(f"*/*{suffix}.png"))
    if not images:
        raise UserInputError(f"{images_dir} holds no CITY/*{suffix}.png images")
    samples = []
    for image in images:
        base = image.name[: -len(f"{suffix}.png")]
        mask = root / "gtFine" / split / image.parent.name / f"{base}_gtFine_labelIds.png"
        if need_masks:
            _require(mask, "Cityscapes labelIds mask")
        samples.append(Sample(base, image, mask))
    return Dataset(
        f"Cityscapes {split}", tuple(samples), MaskReader("cityscapes", ignore_index=ignore_index), CITYSCAPES_CLASSES
    )


def camvid(
    root: Path,
    split: str,
    palette: Path | None = None,
    *,
    ignore_index: int = DEFAULT_IGNORE_INDEX,
    need_masks: bool = True,
) -> Dataset:
    """CamVid: ``SPLIT/`` images with ``SPLIT_labels/<stem>_L.png`` color masks (``class_dict.csv`` maps
    colors to classes) or ``SPLITannot/<stem>.png`` index masks.

    Raises:
        UserInputError: the layout is not there, no palette file for color masks, or an image has no mask.
    """
    images_dir = root / split
    color_dir, index_dir = root / f"{split}_labels", root / f"{split}annot"
    if not images_dir.is_dir():
        raise UserInputError(f"{root} is not a CamVid root with split {split!r}: {images_dir} is missing")
    if not need_masks:
        return Dataset(f"CamVid {split}", tuple(Sample(p.stem, p) for p in list_images(images_dir)))
    if color_dir.is_dir():
        palette = palette or next(
            (p for p in (root / "class_dict.csv", root / "label_colors.txt") if p.is_file()), None
        )
        if palette is None:
            raise UserInputError(
                f"{color_dir} holds color masks: pass --palette FILE (class_dict.csv: name,r,g,b per class)"
            )
        reader = _reader_for_palette(palette, ignore_index)
        samples = pair_by_stem(images_dir, color_dir, mask_suffix="_L")
        return Dataset(f"CamVid {split}", samples, reader, _palette_names(palette), reader.colors)
    if index_dir.is_dir():
        return Dataset(f"CamVid {split}", pair_by_stem(images_dir, index_dir), MaskReader("index"))
    raise UserInputError(f"{root}: neither {color_dir.name}/ (color masks) nor {index_dir.name}/ (index masks) exists")


def _require(path: Path, what: str) -> None:
    if not path.is_file():
        raise UserInputError(f"{what} {path} is missing")


def _available(directory: Path, suffix: str) -> str:
    if not directory.is_dir():
        return f"{directory} does not exist"
    names = sorted(p.name[: len(p.name) - len(suffix)] if suffix else p.name for p in directory.iterdir())
    names = [n for n in names if not n.startswith(".")]
    return "available: " + (", ".join(names[:12]) or "none")


def _reader_for_palette(palette: Path | None, ignore_index: int) -> MaskReader:
    if palette is None:
        return MaskReader("index", ignore_index=ignore_index)
    _, colors = read_palette_file(palette)
    return MaskReader("color", tuple(colors), ignore_index)


def _palette_names(palette: Path) -> tuple[str, ...] | None:
    names, _ = read_palette_file(palette)
    return tuple(n or f"class_{i}" for i, n in enumerate(names))
