"""Dataset layouts as they lie on disk: stem-matched directories, VOC, Cityscapes, CamVid; masks to classes; --calib."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from segdeploy.bundle.layout import palette
from segdeploy.datasets import CITYSCAPES_CLASSES, VOC_CLASSES, DatasetSpec, pair_by_stem
from segdeploy.errors import UserInputError
from segdeploy.pixels import MaskReader, read_palette_file
from segdeploy.quantize import load_calibration


def _image(path: Path, h: int = 6, w: int = 8, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    cv2.imwrite(str(path), pixels)
    return pixels


def _palette_png(path: Path, indices: np.ndarray, colors: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for c in colors for v in c] + [224, 224, 192] * (256 - len(colors)))
    image.save(path)


def _grey_png(path: Path, indices: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), indices.astype(np.uint8))


CLASSES = np.array([[0, 1, 2, 3, 0, 1, 2, 3]] * 6)


def test_stem_matched_masks_read_grey_and_palette_pngs_as_indices(tmp_path):
    _image(tmp_path / "images" / "a.jpg")
    _image(tmp_path / "images" / "b.png", seed=1)
    _grey_png(tmp_path / "masks" / "a.png", CLASSES)
    _palette_png(tmp_path / "masks" / "b.png", CLASSES[::-1], palette(4))  # the colors are not the classes
    dataset = DatasetSpec("pairs", tmp_path / "images", masks=tmp_path / "masks").open()
    assert [(s.stem, s.image.name, s.mask.name) for s in dataset.samples] == [
        ("a", "a.jpg", "a.png"),
        ("b", "b.png", "b.png"),
    ]
    assert (dataset.masks.read(dataset.samples[0].mask) == CLASSES).all()
    assert (dataset.masks.read(dataset.samples[1].mask) == CLASSES[::-1]).all()


def test_a_grey_mask_saved_as_rgb_reads_as_indices_and_a_color_one_asks_for_a_palette(tmp_path):
    grey = np.repeat(CLASSES[:, :, None], 3, axis=2).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    assert (MaskReader().read(tmp_path / "grey.png") == CLASSES).all()
    cv2.imwrite(str(tmp_path / "color.png"), np.dstack([CLASSES, CLASSES * 2, CLASSES]).astype(np.uint8))
    with pytest.raises(UserInputError, match="color image.*--palette"):
        MaskReader().read(tmp_path / "color.png")


def test_images_without_masks_are_refused_naming_one(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "b.png")
    _grey_png(tmp_path / "masks" / "a.png", CLASSES)
    with pytest.raises(UserInputError, match=r"1 of 2 images .* b\.png needs b\.png"):
        pair_by_stem(tmp_path / "images", tmp_path / "masks")


def test_two_images_with_one_stem_are_refused(tmp_path):
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "a.jpg")
    with pytest.raises(UserInputError, match="share the stem 'a'"):
        DatasetSpec("images", tmp_path / "images").open()


def test_voc_reads_its_split_from_the_devkit_root_with_255_borders(tmp_path):
    root = tmp_path / "VOCdevkit" / "VOC2012"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n2007_000042\n")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")
    mask = CLASSES * 5
    mask[0] = 255  # the object border VOC marks
    for name in ("2007_000033", "2007_000042", "2007_000032"):
        _image(root / "JPEGImages" / f"{name}.jpg")
        _palette_png(root / "SegmentationClass" / f"{name}.png", mask, palette(21))
    dataset = DatasetSpec.parse(f"voc:{tmp_path / 'VOCdevkit'}:val", default_split="train").open()
    assert [s.stem for s in dataset.samples] == ["2007_000033", "2007_000042"]
    assert dataset.labels == VOC_CLASSES and len(VOC_CLASSES) == 21
    assert (dataset.masks.read(dataset.samples[0].mask) == mask).all()
    with pytest.raises(UserInputError, match="split 'test'.*available: train, val"):
        DatasetSpec("voc", root, split="test").open()


def test_cityscapes_label_ids_become_the_19_train_ids(tmp_path):
    ids = np.array([[7, 8, 11, 26, 33, 0, 1, 255, 24, 31]], dtype=np.uint8)
    expected = np.array([[0, 1, 2, 13, 18, 255, 255, 255, 11, 16]])
    for city, frame in (("aachen", "000000_000019"), ("bochum", "000000_000313")):
        _image(tmp_path / "leftImg8bit" / "val" / city / f"{city}_{frame}_leftImg8bit.png", 1, 10)
        _grey_png(tmp_path / "gtFine" / "val" / city / f"{city}_{frame}_gtFine_labelIds.png", ids)
        _grey_png(tmp_path / "gtFine" / "val" / city / f"{city}_{frame}_gtFine_color.png", ids)  # not read
    dataset = DatasetSpec("cityscapes", tmp_path, split="val").open()
    assert [s.stem for s in dataset.samples] == ["aachen_000000_000019", "bochum_000000_000313"]
    assert dataset.labels == CITYSCAPES_CLASSES and len(CITYSCAPES_CLASSES) == 19
    assert (dataset.masks.read(dataset.samples[1].mask) == expected).all()
    other = DatasetSpec("cityscapes", tmp_path, split="val").open(ignore_index=250)
    assert (other.masks.read(other.samples[0].mask) == np.where(expected == 255, 250, expected)).all()


def test_camvid_color_masks_map_through_class_dict_csv(tmp_path):
    names = ["Sky", "Building", "Road", "Car"]
    colors = [(128, 128, 128), (128, 0, 0), (128, 64, 128), (64, 0, 128)]
    (tmp_path / "class_dict.csv").write_text(
        "name,r,g,b\n" + "".join(f"{n},{r},{g},{b}\n" for n, (r, g, b) in zip(names, colors))
    )
    rgb = np.array(colors, dtype=np.uint8)[CLASSES]
    for stem in ("0001TP_006690", "0001TP_006720"):
        _image(tmp_path / "val" / f"{stem}.png")
        (tmp_path / "val_labels").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "val_labels" / f"{stem}_L.png"), rgb[:, :, ::-1])
    _palette_png(tmp_path / "val_labels" / "0001TP_006720_L.png", CLASSES, [list(c) for c in colors])
    dataset = DatasetSpec("camvid", tmp_path, split="val").open()
    assert dataset.labels == tuple(names) and dataset.colors == tuple(colors)
    for sample in dataset.samples:  # an RGB mask and a palette PNG of the same colors read alike
        assert (dataset.masks.read(sample.mask) == CLASSES).all()
    rgb[2, 3] = (1, 2, 3)
    cv2.imwrite(str(tmp_path / "val_labels" / "0001TP_006690_L.png"), rgb[:, :, ::-1])
    with pytest.raises(UserInputError, match=r"color \(1, 2, 3\).*not list"):
        dataset.masks.read(dataset.samples[0].mask)


def test_camvid_index_annotations_need_no_palette(tmp_path):
    _image(tmp_path / "test" / "Seq05VD_f00000.png")
    _grey_png(tmp_path / "testannot" / "Seq05VD_f00000.png", CLASSES)
    dataset = DatasetSpec.parse(f"camvid:{tmp_path}:test", default_split="val").open()
    assert (dataset.masks.read(dataset.samples[0].mask) == CLASSES).all()


def test_palette_files_read_as_csv_or_rgb_lines_and_refuse_what_is_malformed(tmp_path):
    lines = tmp_path / "label_colors.txt"
    lines.write_text("# CamVid\n64 128 64\tAnimal\n192 0 128 Archway\n0 0 0\n")
    assert read_palette_file(lines) == (["Animal", "Archway", None], [(64, 128, 64), (192, 0, 128), (0, 0, 0)])
    bad = tmp_path / "bad.csv"
    bad.write_text("name,r,g,b\nsky,1,2\n")
    with pytest.raises(UserInputError, match="malformed"):
        read_palette_file(bad)
    bad.write_text("1 2 3 a\n1 2 3 b\n")
    with pytest.raises(UserInputError, match="twice"):
        read_palette_file(bad)
    bad.write_text("1 2 300 a\n")
    with pytest.raises(UserInputError, match="outside 0..255"):
        read_palette_file(bad)


def test_dataset_specifications_parse_layout_root_and_split(tmp_path):
    assert DatasetSpec.parse("voc:/data/VOC2012:train", default_split="val") == DatasetSpec(
        "voc", Path("/data/VOC2012"), split="train"
    )
    assert DatasetSpec.parse("Cityscapes:/data/cs", default_split="val").split == "val"
    assert DatasetSpec.parse(str(tmp_path), default_split="val").layout == "images"
    with pytest.raises(UserInputError, match="unknown dataset layout 'coco'"):
        DatasetSpec.parse("coco:/data/coco:val", default_split="val")


def test_calibration_takes_a_dataset_split_spread_over_it(tmp_path):
    for i in range(4):
        _image(tmp_path / "train" / f"f{i}.png", 10, 12, seed=i)
        _grey_png(tmp_path / "trainannot" / f"f{i}.png", np.zeros((10, 12)))
    picked = tmp_path / "picked"
    picked.mkdir()
    for i in (0, 2):  # two of four, spread: the first and the third
        (picked / f"f{i}.png").write_bytes((tmp_path / "train" / f"f{i}.png").read_bytes())
    from_split = load_calibration(f"camvid:{tmp_path}", shape=(8, 8), in_channels=3, calib_size=2)
    from_dir = load_calibration(picked, shape=(8, 8), in_channels=3, calib_size=2)
    assert from_split.shape == (2, 3, 8, 8) and np.array_equal(from_split, from_dir)
    with pytest.raises(UserInputError, match="calibration data .* does not exist"):
        load_calibration(tmp_path / "nowhere", shape=(8, 8), in_channels=3)
