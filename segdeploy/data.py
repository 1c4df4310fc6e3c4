"""A synthetic shapes segmentation dataset, tiny CPU training and mIoU.

Random weights say little about accuracy: they overflow or sit on near-ties
(see docs/verification.md). These helpers give models weights that behave like trained
ones within seconds, so FP16 and export checks can be judged by mIoU on
held-out images. Nothing is downloaded; everything is deterministic per seed.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    import torch
    from torch import nn

# Class k (k >= 1) is the k-th kind; class 0 is the background.
SHAPE_KINDS = ("circle", "rectangle", "triangle", "diamond", "ring", "cross")

# Pixel values are drawn in [0, 1] and normalised with these constants.
_PIXEL_MEAN, _PIXEL_STD = 0.5, 0.25

# Weight of auxiliary losses (PSPNet's paper uses 0.4 for its aux head).
AUX_LOSS_WEIGHT = 0.4

# The tiny-training recipe (measured in benchmarks/results/precision.md: every zoo model's small
# test config learns with it on 48x48 shapes images). Adam; the learning rate warms up linearly for
# TRAIN_WARMUP steps, then follows a cosine to zero at the step budget.
TRAIN_STEPS = 600
TRAIN_WARMUP = 20
# Plain VGG stacks (no normalisation: FCN-8s, DeepLab v1) need a lower rate: FCN-8s stayed at the
# all-background answer at 5e-3, while SegNet and PSPNet needed 5e-3 to leave it (docs/int8.md).
LR_NORMALIZED = 5e-3
LR_PLAIN = 1e-3

# Class tints come from a fixed generator so every seed shares one palette.
_PALETTE_SEED = 20240611


def make_shapes(
    n: int,
    *,
    size: tuple[int, int] = (64, 64),
    num_classes: int = 4,
    in_channels: int = 3,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Images of random filled shapes on a noisy background, labelled by shape kind.

    Each image holds 1 to 4 shapes (circles, rectangles, triangles, ... one kind
    per class, later shapes occluding earlier ones) on a smooth random
    background. A shape's colour is its class tint plus a random offset, and
    pixel noise is added, so colour alone does not give the class away.

    Args:
        n: number of images.
        size: (height, width), each at least 8.
        num_classes: background plus shape kinds, 2 to ``len(SHAPE_KINDS) + 1``.
        in_channels: image channels.
        seed: the same seed gives the same images and labels.

    Returns:
        ``(images, labels)``: float32 ``[n, C, H, W]`` normalised to roughly zero
        mean and unit variance, and int64 ``[n, H, W]`` class indices.
    """
    height, width = (int(s) for s in size)
    if n < 1 or in_channels < 1 or height < 8 or width < 8:
        raise UserInputError(
            f"bad shapes dataset request: n={n}, size={size}, in_channels={in_channels}; "
            "need n >= 1, in_channels >= 1 and height, width >= 8"
        )
    if not 2 <= num_classes <= len(SHAPE_KINDS) + 1:
        raise UserInputError(f"bad num_classes {num_classes} for the shapes dataset: use 2 to {len(SHAPE_KINDS) + 1}")
    palette = np.random.default_rng(_PALETTE_SEED).uniform(0.15, 0.85, size=(num_classes, in_channels))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    images = np.empty((n, in_channels, height, width), np.float32)
    labels = np.zeros((n, height, width), np.int64)
    for i in range(n):
        image = _background(rng, in_channels, yy / height, xx / width)
        for _ in range(rng.integers(1, 5)):
            cls = int(rng.integers(1, num_classes))
            mask = _shape_mask(SHAPE_KINDS[cls - 1], rng, yy, xx, height, width)
            colour = np.clip(palette[cls] + rng.normal(0.0, 0.12, in_channels), 0.0, 1.0)
            image[:, mask] = colour[:, None]
            labels[i][mask] = cls
        image += rng.normal(0.0, 0.08, image.shape)
        images[i] = (image - _PIXEL_MEAN) / _PIXEL_STD
    return images, labels


def _background(rng: np.random.Generator, channels: int, v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """A smooth colour gradient, so flat regions are not exact ties."""
    base = rng.uniform(0.2, 0.8, (channels, 1, 1))
    slope_v = rng.uniform(-0.2, 0.2, (channels, 1, 1))
    slope_u = rng.uniform(-0.2, 0.2, (channels, 1, 1))
    return (base + slope_v * (v - 0.5) + slope_u * (u - 0.5)).astype(np.float64)


def _shape_mask(
    kind: str, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, height: int, width: int
) -> np.ndarray:
    """Boolean mask of one randomly placed shape of ``kind``."""
    short = min(height, width)
    radius = rng.uniform(0.08, 0.22) * short
    cy, cx = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
    dy, dx = yy - cy, xx - cx
    if kind == "circle":
        return dy**2 + dx**2 <= radius**2
    if kind == "rectangle":
        half_h, half_w = radius * rng.uniform(0.5, 1.2), radius * rng.uniform(0.5, 1.2)
        return (np.abs(dy) <= half_h) & (np.abs(dx) <= half_w)
    if kind == "triangle":
        # Upward triangle: apex at the top, base at the bottom of the bounding box.
        depth = (dy + radius) / (2 * radius)
        return (depth >= 0) & (depth <= 1) & (np.abs(dx) <= depth * radius)
    if kind == "diamond":
        return np.abs(dy) + np.abs(dx) <= radius
    if kind == "ring":
        distance = np.sqrt(dy**2 + dx**2)
        return (distance <= radius) & (distance >= 0.55 * radius)
    # cross
    arm = 0.35 * radius
    return ((np.abs(dy) <= arm) & (np.abs(dx) <= radius)) | ((np.abs(dx) <= arm) & (np.abs(dy) <= radius))


def train_tiny(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    *,
    steps: int = TRAIN_STEPS,
    lr: float | None = None,
    batch_size: int = 8,
    seconds: float | None = None,
    seed: int = 0,
    warmup: int | None = None,
    balance: bool = True,
) -> dict[str, Any]:
    """Train ``model`` briefly on the CPU: Adam, warm-up then cosine decay, class-balanced cross-entropy.

    Background covers most pixels, so an unweighted loss is minimised early by
    predicting background everywhere, and deep nets trained for seconds stay
    there. Each class's loss is weighted by ``1 / sqrt(frequency)`` in
    ``labels`` (``class_weights``), which makes leaving that solution pay.
    BatchNorm runs in train mode, so its statistics come from real batches.
    Models that return auxiliary outputs in train mode (a tuple, main output
    first, or a dict with ``"out"``: deep supervision, PSPNet's aux head) add
    each auxiliary cross-entropy with weight ``AUX_LOSS_WEIGHT``.
    Training stops after ``steps`` steps or, when ``seconds`` is given, as soon as
    that much time has passed (whichever comes first); a step budget keeps
    results reproducible, a time budget keeps tests bounded on slow machines.

    Args:
        model: a module mapping ``[N, C, H, W]`` to logits ``[N, K, H, W]``.
        images: float32 ``[n, C, H, W]``, e.g. from ``make_shapes``.
        labels: int64 ``[n, H, W]``.
        steps: the most optimizer steps; the learning-rate schedule spans them.
        lr: peak Adam learning rate; default ``LR_NORMALIZED`` for models with normalisation
            layers, else ``LR_PLAIN`` (``recipe_lr``).
        batch_size: images per step (at least 2 so BatchNorm sees a batch).
        seconds: optional wall-clock limit.
        seed: seeds the batch order.
        warmup: steps of linear learning-rate warm-up; default ``TRAIN_WARMUP``, at most a tenth of ``steps``.
        balance: weight classes by ``class_weights(labels)``; False for plain cross-entropy.

    Returns:
        ``{"losses": [...], "steps": int, "seconds": float, "lr": float}``; the model is left in eval mode.
    """
    import math

    import torch
    import torch.nn.functional as F

    images_t = torch.as_tensor(images, dtype=torch.float32)
    labels_t = torch.as_tensor(labels, dtype=torch.int64)
    if images_t.shape[0] != labels_t.shape[0] or images_t.shape[0] < 2:
        raise UserInputError(
            f"train_tiny needs at least 2 images and one label map per image "
            f"(got {images_t.shape[0]} images, {labels_t.shape[0]} label maps)"
        )
    if steps < 1:
        raise UserInputError(f"train_tiny needs at least 1 step (got {steps})")
    peak_lr = recipe_lr(model) if lr is None else lr
    batch_size = max(2, min(batch_size, images_t.shape[0]))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr)
    weight = None
    if balance:
        weight = torch.as_tensor(class_weights(labels_t.numpy(), _num_outputs(model, images_t)), dtype=torch.float32)
    warmup = min(TRAIN_WARMUP, steps // 10) if warmup is None else max(0, min(warmup, steps - 1))

    def lr_at(step: int) -> float:
        if step < warmup:
            return peak_lr * (step + 1) / warmup
        return peak_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    losses: list[float] = []
    # One thread: on a shared, oversubscribed CPU, torch's thread pool spin-waits
    # and a tiny step was measured 30x slower with 2 threads than with 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    model.train()
    try:
        for step in range(steps):
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            batch = torch.randint(0, images_t.shape[0], (batch_size,), generator=generator)
            main, *auxiliary = _training_outputs(model(images_t[batch]))
            target = labels_t[batch]
            loss = F.cross_entropy(main, target, weight=weight)
            for extra in auxiliary:
                loss = loss + AUX_LOSS_WEIGHT * _auxiliary_loss(extra, target, weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        model.eval()
        torch.set_num_threads(threads)
    return {"losses": losses, "steps": len(losses), "seconds": time.perf_counter() - start, "lr": peak_lr}


def recipe_lr(model: nn.Module) -> float:
    """The recipe's peak learning rate: ``LR_NORMALIZED`` with normalisation layers, else ``LR_PLAIN``."""
    from torch import nn

    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
    return LR_NORMALIZED if any(isinstance(m, norms) for m in model.modules()) else LR_PLAIN


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class loss weights ``1 / sqrt(frequency)``, scaled so the average pixel weighs 1.

    Args:
        labels: integer label maps.
        num_classes: K; classes absent from ``labels`` get weight 0 (no pixel carries them).

    Returns:
        float32 ``[K]``.
    """
    counts = np.bincount(np.asarray(labels, np.int64).ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    frequency = counts / max(counts.sum(), 1.0)
    weights = np.where(frequency > 0, 1.0 / np.sqrt(np.maximum(frequency, 1e-12)), 0.0)
    average = float((weights * frequency).sum())
    return (weights / average if average > 0 else np.ones(num_classes)).astype(np.float32)


def _num_outputs(model: nn.Module, images: torch.Tensor) -> int:
    """Logit channels, from one eval-mode forward of two images (which leaves BatchNorm statistics alone)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return int(_training_outputs(model(images[:2]))[0].shape[1])
    finally:
        model.train(was_training)


def _auxiliary_loss(extra: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-pixel auxiliary logits: cross-entropy; per-image class scores (GINet's semantic context): presence BCE."""
    import torch
    import torch.nn.functional as F

    if extra.ndim == 2:  # [N, K]: whether each class appears in the image
        present = torch.zeros_like(extra).scatter_(1, target.flatten(1), 1.0)
        return F.binary_cross_entropy_with_logits(extra, present)
    return F.cross_entropy(extra, target, weight=weight)


def _training_outputs(output: Any) -> list[torch.Tensor]:
    """The main logits first, then any auxiliary logits."""
    if isinstance(output, dict):
        return [output["out"], *(value for key, value in output.items() if key != "out")]
    if isinstance(output, (tuple, list)):
        return list(output)
    return [output]


def evaluate(logits: Any, labels: Any, num_classes: int) -> float:
    """Mean intersection over union of ``argmax(logits)`` against ``labels``.

    Classes absent from both prediction and labels are left out of the mean.

    Args:
        logits: ``[N, K, H, W]`` scores (numpy array or torch tensor).
        labels: ``[N, H, W]`` class indices, same N, H, W.
        num_classes: K.

    Returns:
        mIoU in [0, 1].
    """
    scores = _to_numpy(logits)
    target = _to_numpy(labels).astype(np.int64)
    if scores.ndim != 4 or target.shape != (scores.shape[0], *scores.shape[2:]):
        raise UserInputError(
            f"evaluate needs logits [N, K, H, W] and labels [N, H, W]; got {scores.shape} and {target.shape}"
        )
    from segdeploy.criteria import mean_iou

    return mean_iou(scores.argmax(axis=1), target, num_classes)


def _to_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)
