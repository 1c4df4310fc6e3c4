"""Confusion matrices and IoU against independent computations: a hand-worked example and the field's formula."""

from __future__ import annotations

import numpy as np
import pytest

from segdeploy.errors import UserInputError
from segdeploy.metrics import Scores, confusion_matrix, image_miou, iou_per_class, mean_iou


def reference_scores(
    predictions: list[np.ndarray], truths: list[np.ndarray], num_classes: int, ignore_index: int
) -> tuple[list[float | None], float, float]:
    """torchmetrics' / mmseg's definition written out per class with boolean masks (no confusion matrix).

    Per class over the whole set: intersection = |pred == c and truth == c|, union = |pred == c or truth == c|,
    both on pixels whose truth is not the ignore index; IoU = intersection / union, None when the union is
    empty; mIoU the mean of the defined IoUs; pixel accuracy = |pred == truth| / |scored pixels|.
    """
    inter = [0] * num_classes
    union = [0] * num_classes
    correct = scored = 0
    for pred, truth in zip(predictions, truths):
        valid = truth != ignore_index
        for c in range(num_classes):
            inter[c] += int(np.sum((pred == c) & (truth == c) & valid))
            union[c] += int(np.sum(((pred == c) | (truth == c)) & valid))
        correct += int(np.sum((pred == truth) & valid))
        scored += int(np.sum(valid))
    ious = [i / u if u else None for i, u in zip(inter, union)]
    present = [v for v in ious if v is not None]
    return ious, sum(present) / len(present), correct / scored


def test_a_hand_worked_example_scores_as_computed_on_paper():
    truth = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 1, 0]])  # the last pixel is ignored whatever is predicted
    confusion = confusion_matrix(pred, truth, 4)
    # truth 0: one right, one called 1; truth 1: both right; truth 2: called 1
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    scores = Scores(confusion, 1)
    # class 0: TP 1, FP 0, FN 1 -> 1/2; class 1: TP 2, FP 2, FN 0 -> 2/4; class 2: TP 0, FN 1 -> 0; class 3 absent
    assert scores.per_class_iou == [0.5, 0.5, 0.0, None]
    assert scores.miou == pytest.approx((0.5 + 0.5 + 0.0) / 3, abs=0)
    assert scores.pixel_accuracy == 3 / 5


def test_scores_summed_over_a_set_equal_the_per_class_formula():
    rng = np.random.default_rng(3)
    truths = [rng.integers(0, 6, (17, 23)) for _ in range(5)]
    for truth in truths:
        truth[rng.random(truth.shape) < 0.1] = 255
    # predictions right most of the time, class 5 never predicted, class 4 never in the truth
    truths = [np.where(t == 4, 3, t) for t in truths]
    preds = [np.where(rng.random(t.shape) < 0.7, np.where(t == 255, 0, t), rng.integers(0, 5, t.shape)) for t in truths]
    scores = Scores.empty(7)
    for pred, truth in zip(preds, truths):
        scores.add(confusion_matrix(pred, truth, 7))
    ious, miou, accuracy = reference_scores(preds, truths, 7, 255)
    assert scores.per_class_iou == pytest.approx(ious, abs=1e-15)
    assert scores.per_class_iou[6] is None  # absent from both truth and prediction
    assert scores.miou == pytest.approx(miou, abs=1e-15)
    assert scores.pixel_accuracy == pytest.approx(accuracy, abs=1e-15)
    assert scores.images == 5


def test_ignored_pixels_change_nothing_whatever_they_hold_or_predict():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (20, 20))
    pred = rng.integers(0, 3, (20, 20))
    marked = truth.copy()
    marked[5:12, 3:9] = 255
    inside = np.zeros(truth.shape, bool)
    inside[5:12, 3:9] = True
    other_pred = pred.copy()
    other_pred[inside] = (pred[inside] + 1) % 3
    expected = confusion_matrix(pred[~inside], truth[~inside], 3)
    assert (confusion_matrix(pred, marked, 3) == expected).all()
    assert (confusion_matrix(other_pred, marked, 3) == expected).all()


def test_another_ignore_index_is_left_out_and_255_is_then_a_class_error():
    truth = np.array([[0, 1], [9, 255]])
    pred = np.array([[0, 1], [1, 0]])
    with pytest.raises(UserInputError, match="holds class 255"):
        confusion_matrix(pred, truth, 2, ignore_index=9)
    assert confusion_matrix(pred, np.where(truth == 255, 1, truth), 2, ignore_index=9).sum() == 3


def test_a_mask_with_classes_beyond_the_model_is_refused_with_a_hint():
    truth = np.array([[0, 26], [7, 1]])  # Cityscapes label ids, not train ids
    with pytest.raises(UserInputError, match=r"holds class 26.*Cityscapes labelIds"):
        confusion_matrix(np.zeros((2, 2), int), truth, 19, where="aachen_labelIds.png")


def test_sizes_that_differ_are_refused():
    with pytest.raises(UserInputError, match="differ in size"):
        confusion_matrix(np.zeros((4, 5), int), np.zeros((5, 4), int), 2)


def test_merging_pieces_equals_scoring_the_whole_set():
    rng = np.random.default_rng(1)
    pairs = [(rng.integers(0, 4, (9, 11)), rng.integers(0, 4, (9, 11))) for _ in range(6)]
    whole, first, second = Scores.empty(4), Scores.empty(4), Scores.empty(4)
    for i, (pred, truth) in enumerate(pairs):
        confusion = confusion_matrix(pred, truth, 4)
        whole.add(confusion)
        (first if i % 2 else second).add(confusion)
    second.merge(first)
    assert (second.confusion == whole.confusion).all() and second.images == whole.images == 6
    assert second.miou == whole.miou


def test_image_miou_is_over_the_classes_in_that_image():
    confusion = confusion_matrix(np.array([[0, 0, 2]]), np.array([[0, 0, 0]]), 3)
    assert iou_per_class(confusion) == [2 / 3, None, 0.0]
    assert image_miou(confusion) == pytest.approx(1 / 3)
    assert image_miou(np.zeros((3, 3), np.int64)) is None
    assert mean_iou([None, None]) is None
