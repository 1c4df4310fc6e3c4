"""Confusion matrices and the scores read from them: per-class IoU, mIoU, pixel accuracy.

The definitions are the field's (mmsegmentation's ``IoUMetric``, torchmetrics' ``MeanIoU``): one
confusion matrix summed over the whole set (rows the truth, columns the prediction), pixels whose
truth is the ignore index left out; a class's IoU is ``TP / (TP + FP + FN)``; a class absent from
both truth and prediction has no IoU (``None``) and mIoU is the mean over the classes that have one.
Pixel accuracy is the trace over the total. Summing matrices is exact, so a set scored in pieces (or
on a cluster) scores exactly as scored whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segdeploy.errors import UserInputError


def confusion_matrix(
    prediction: np.ndarray, truth: np.ndarray, num_classes: int, *, ignore_index: int | None = 255, where: str = ""
) -> np.ndarray:
    """The ``num_classes x num_classes`` int64 confusion matrix of one class map against its truth.

    Args:
        prediction: HxW class indices.
        truth: HxW class indices, ``ignore_index`` where no class is scored.
        num_classes: K.
        ignore_index: the truth value left out (None: none).
        where: how messages name the image.

    Raises:
        UserInputError: different shapes, or a truth or predicted value outside ``0..K-1`` (a mask of another
            layout, or a model with more classes than the set).
    """
    if prediction.shape != truth.shape:
        raise UserInputError(
            f"{where or 'the mask'}: mask {truth.shape[1]}x{truth.shape[0]} and image "
            f"{prediction.shape[1]}x{prediction.shape[0]} differ in size"
        )
    truth = truth.ravel()
    prediction = prediction.ravel()
    if ignore_index is not None:
        keep = truth != ignore_index
        if not keep.all():
            truth, prediction = truth[keep], prediction[keep]
    if truth.size == 0:
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    top = int(truth.max())
    if top >= num_classes or int(truth.min()) < 0:
        raise UserInputError(
            f"{where or 'a mask'} holds class {top}, but there are {num_classes} classes (0..{num_classes - 1}) "
            f"and the ignore index is {ignore_index}: is it another layout (Cityscapes labelIds, a color mask "
            "needing --palette) or another ignore index?"
        )
    if int(prediction.max()) >= num_classes or int(prediction.min()) < 0:
        raise UserInputError(f"{where or 'a prediction'}: the model predicted a class outside 0..{num_classes - 1}")
    # one bincount over truth * K + prediction: a few milliseconds for a megapixel, whatever K is
    flat = truth.astype(np.intp) * num_classes + prediction.astype(np.intp)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes).astype(np.int64)


def iou_per_class(confusion: np.ndarray) -> list[float | None]:
    """``TP / (TP + FP + FN)`` per class; None for a class absent from both truth and prediction."""
    confusion = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(confusion)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    return [float(t) / float(u) if u > 0 else None for t, u in zip(tp.tolist(), union.tolist())]


def mean_iou(per_class: list[float | None]) -> float | None:
    """The mean IoU over the classes that have one (None when none has)."""
    present = [v for v in per_class if v is not None]
    return sum(present) / len(present) if present else None


@dataclass
class Scores:
    """The scores of one candidate over a set: the summed confusion matrix and the image count."""

    confusion: np.ndarray
    images: int = 0

    @classmethod
    def empty(cls, num_classes: int) -> Scores:
        return cls(np.zeros((num_classes, num_classes), dtype=np.int64), 0)

    def add(self, confusion: np.ndarray, images: int = 1) -> None:
        self.confusion += confusion
        self.images += images

    def merge(self, other: Scores) -> None:
        self.add(other.confusion, other.images)

    @property
    def per_class_iou(self) -> list[float | None]:
        return iou_per_class(self.confusion)

    @property
    def miou(self) -> float | None:
        return mean_iou(self.per_class_iou)

    @property
    def pixel_accuracy(self) -> float | None:
        total = int(self.confusion.sum())
        return int(np.trace(self.confusion)) / total if total else None

    @property
    def pixels(self) -> int:
        """Scored pixels (the ignore index left out)."""
        return int(self.confusion.sum())


def image_miou(confusion: np.ndarray) -> float | None:
    """One image's mIoU over the classes in its truth or prediction (None when all its pixels are ignored)."""
    if not confusion.any():
        return None
    return mean_iou(iou_per_class(confusion))
