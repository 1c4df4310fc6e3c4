"""``segdeploy eval``: what each runtime and precision costs on labeled images, candidates side by side.

Every image is decoded once (a thread ahead of the models) and run through every candidate; each
prediction adds its confusion matrix to the candidate's sum (``segdeploy.metrics``), counts the pixels
it shares with the first candidate's prediction, and may join the candidate's worst images (lowest
per-image mIoU). A piece of the set gives an ``EvalPartial``; partials merge exactly, so a run split
over a Ray cluster (``segdeploy.distributed``) scores exactly as the run in one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segdeploy.datasets import Dataset, DatasetSpec, Sample
from segdeploy.errors import UserInputError
from segdeploy.metrics import Scores, confusion_matrix, image_miou
from segdeploy.pixels import DEFAULT_IGNORE_INDEX, MaskReader, read_image
from segdeploy.streams import prefetch

if TYPE_CHECKING:
    from segdeploy.candidates import CandidateSpec
    from segdeploy.distributed import RayOptions

DEFAULT_WORST = 5

Loaded = tuple[Sample, np.ndarray, np.ndarray]
"""A sample with its decoded image (BGR) and mask (class indices)."""


@dataclass(frozen=True)
class EvalOptions:
    """How samples are scored (picklable: cluster workers get a copy)."""

    num_classes: int
    masks: MaskReader
    ignore_index: int | None = DEFAULT_IGNORE_INDEX
    worst: int = DEFAULT_WORST
    batch: int = 1


@dataclass
class WorstImage:
    """One of a candidate's lowest-scoring images, with its prediction (kept for the disagreement map)."""

    score: float
    stem: str
    image: Path
    mask: Path
    prediction: np.ndarray = field(repr=False)

    @property
    def key(self) -> tuple[float, str]:
        return self.score, self.stem


@dataclass
class EvalPartial:
    """What a piece of the set gives, per candidate; ``merge`` is exact and order-free."""

    scores: list[Scores]
    agreement: list[int]
    pixels: int = 0
    worst: list[list[WorstImage]] = field(default_factory=list)
    keep: int = DEFAULT_WORST

    @classmethod
    def empty(cls, candidates: int, num_classes: int, keep: int) -> EvalPartial:
        return cls(
            [Scores.empty(num_classes) for _ in range(candidates)], [0] * candidates, 0,
            [[] for _ in range(candidates)], keep,
        )  # fmt: skip

    def merge(self, other: EvalPartial) -> None:
        for mine, theirs in zip(self.scores, other.scores):
            mine.merge(theirs)
        self.agreement = [a + b for a, b in zip(self.agreement, other.agreement)]
        self.pixels += other.pixels
        for index, images in enumerate(other.worst):
            for image in images:
                self.consider(index, image)

    def consider(self, index: int, image: WorstImage) -> None:
        """Keep ``image`` if it is among the candidate's ``keep`` lowest (score, stem)."""
        if self.keep <= 0:
            return
        kept = self.worst[index]
        kept.append(image)
        kept.sort(key=lambda w: w.key)
        del kept[self.keep :]


class Evaluator:
    """Scores samples with every candidate; one per process or cluster worker (one runner per candidate)."""

    def __init__(self, specs: Sequence[CandidateSpec], options: EvalOptions, threads: int | None = None) -> None:
        from segdeploy.candidates import Segmenter

        self.options = options
        self.segmenters = [Segmenter(spec, threads) for spec in specs]

    def __enter__(self) -> Evaluator:
        for segmenter in self.segmenters:
            segmenter.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        for segmenter in self.segmenters:
            segmenter.__exit__(*exc)

    def run(self, samples: Sequence[Sample], progress: Callable[[int], None] | None = None) -> EvalPartial:
        """Score ``samples``: consecutive images of one size run in batches of ``options.batch``.

        Three stages overlap, like a data loader's: a thread decodes images and masks, a thread runs the
        models (ONNX Runtime, TensorRT and torch release the GIL), and this thread turns outputs into
        class maps and confusion matrices; bounded queues between them keep memory bounded.

        Raises:
            UserInputError: an unreadable image or mask, sizes that differ, or mask values outside the classes.
        """
        partial = EvalPartial.empty(len(self.segmenters), self.options.num_classes, self.options.worst)
        groups = self._groups(prefetch(samples, self._load))
        for group, outputs in prefetch(groups, self._infer, depth=2):
            self._score(group, outputs, partial)
            if progress:
                progress(len(group))
        return partial

    def _groups(self, loaded: Iterator[Loaded]) -> Iterator[list[Loaded]]:
        """Consecutive samples of one image size, at most ``options.batch`` together."""
        pending: list[Loaded] = []
        for item in loaded:
            if pending and (len(pending) >= self.options.batch or pending[0][1].shape[:2] != item[1].shape[:2]):
                yield pending
                pending = []
            pending.append(item)
        if pending:
            yield pending

    def _load(self, sample: Sample) -> Loaded:
        if sample.mask is None:
            raise UserInputError(f"{sample.image} has no mask")
        image = read_image(sample.image)
        truth = self.options.masks.read(sample.mask)
        if truth.shape[:2] != image.shape[:2]:
            raise UserInputError(
                f"mask {sample.mask} is {truth.shape[1]}x{truth.shape[0]} but image {sample.image} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        return sample, image, truth

    def _infer(self, group: list[Loaded]) -> tuple[list[Loaded], list[Any]]:
        frames = [image for _, image, _ in group]
        return group, [segmenter.infer(frames) for segmenter in self.segmenters]

    def _score(self, group: list[Loaded], outputs: list[Any], partial: EvalPartial) -> None:
        options = self.options
        frames = [image for _, image, _ in group]
        first: list[np.ndarray] = []
        for index, (segmenter, output) in enumerate(zip(self.segmenters, outputs)):
            maps = segmenter.classmaps(output, frames)
            for (sample, _, truth), prediction in zip(group, maps):
                where = str(sample.mask)
                confusion = confusion_matrix(
                    prediction, truth, options.num_classes, ignore_index=options.ignore_index, where=where
                )
                partial.scores[index].add(confusion)
                score = image_miou(confusion)
                if score is not None:
                    partial.consider(index, WorstImage(score, sample.stem, sample.image, sample.mask, prediction))  # type: ignore[arg-type]
            if index == 0:
                first = maps
                partial.agreement[0] += sum(m.size for m in maps)
            else:
                partial.agreement[index] += sum(int(np.count_nonzero(a == b)) for a, b in zip(maps, first))
        partial.pixels += sum(frame.shape[0] * frame.shape[1] for frame in frames)


# --------------------------------------------------------------------------- results
@dataclass
class EvalResult:
    """The scores of every candidate over a set, and how to report them (``segdeploy.eval_report``)."""

    candidates: list[CandidateSpec]
    labels: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    partial: EvalPartial
    dataset: str
    ignore_index: int | None
    masks: MaskReader = field(default_factory=MaskReader)

    def change(self, index: int) -> dict[str, Any]:
        """Candidate ``index`` against the first: mIoU and pixel accuracy differences, pixel agreement."""
        base, this = self.partial.scores[0], self.partial.scores[index]
        return {
            "candidate": self.candidates[index].name,
            "miou": _difference(this.miou, base.miou),
            "pixel_accuracy": _difference(this.pixel_accuracy, base.pixel_accuracy),
            "agreement": self.partial.agreement[index] / self.partial.pixels if self.partial.pixels else None,
        }

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: ``results`` (the contract), then the changes, the candidates and the set."""
        results = [
            {
                "candidate": spec.name,
                "miou": scores.miou,
                "pixel_accuracy": scores.pixel_accuracy,
                "per_class_iou": scores.per_class_iou,
                "images": scores.images,
            }
            for spec, scores in zip(self.candidates, self.partial.scores)
        ]
        return {
            "results": results,
            "baseline": self.candidates[0].name,
            "changes": [self.change(i) for i in range(len(self.candidates))],
            "candidates": [spec.describe() for spec in self.candidates],
            "classes": list(self.labels),
            "ignore_index": self.ignore_index,
            "dataset": self.dataset,
            "scored_pixels": self.partial.scores[0].pixels,
            "worst": [
                {
                    "candidate": spec.name,
                    "images": [{"stem": w.stem, "miou": w.score, "image": str(w.image)} for w in worst],
                }
                for spec, worst in zip(self.candidates, self.partial.worst)
            ],
        }


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def evaluate(
    candidates: Sequence[str],
    data: DatasetSpec | Dataset,
    *,
    ignore_index: int | None = DEFAULT_IGNORE_INDEX,
    weights: str | os.PathLike[str] | None = None,
    labels_file: str | os.PathLike[str] | None = None,
    worst: int = DEFAULT_WORST,
    batch: int = 1,
    threads: int | None = None,
    ray: RayOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Score each candidate on a labeled set.

    Args:
        candidates: ONNX files, plans, bundle directories and ``pytorch`` (the first is the baseline).
        data: the labeled set (``DatasetSpec`` as the user named it, or an opened ``Dataset``).
        ignore_index: the mask value left out of every score (None: none).
        weights: the ``pytorch`` candidate's checkpoint (default: what the metadata records).
        labels_file: class names, one per line.
        worst: the lowest-scoring images kept per candidate.
        batch: images of one size run together.
        threads: CPU threads per runner.
        ray: run on a Ray cluster (``segdeploy.distributed``); the scores equal the one-process run's.
        progress: ``progress(done, total)`` as images are scored.

    Raises:
        UserInputError: bad candidates or set, a set whose classes are not the model's, or nothing to score.
    """
    from segdeploy.candidates import resolve_candidates

    if batch < 1 or worst < 0:
        raise UserInputError(f"--batch must be at least 1 and --worst at least 0 (got {batch} and {worst})")
    specs = resolve_candidates(candidates, weights=os.fspath(weights) if weights else None)
    dataset = data if isinstance(data, Dataset) else data.open(ignore_index=_mapped_ignore(ignore_index))
    num_classes = specs[0].num_classes
    labels, colors = _classes(specs[0], dataset, num_classes, labels_file)
    options = EvalOptions(num_classes, dataset.masks or MaskReader(), ignore_index, worst, batch)
    done = 0

    def step(count: int) -> None:
        nonlocal done
        done += count
        if progress:
            progress(done, len(dataset))

    if ray is not None:
        from functools import partial as bind

        from segdeploy.artifact import Runtime
        from segdeploy.distributed import run_on_ray

        partial = EvalPartial.empty(len(specs), num_classes, worst)
        needs_gpu = any(spec.runtime is Runtime.TRT for spec in specs)
        factory = bind(Evaluator, specs, options, ray.threads)
        for count, part in run_on_ray(factory, dataset.samples, ray, needs_gpu=needs_gpu):
            partial.merge(part)
            step(count)
    else:
        with Evaluator(specs, options, threads) as evaluator:
            partial = evaluator.run(dataset.samples, step)
    if partial.scores[0].pixels == 0:
        raise UserInputError(f"every mask pixel of {dataset.description} is the ignore index {ignore_index}")
    return EvalResult(specs, labels, colors, partial, dataset.description, ignore_index, options.masks)


def _mapped_ignore(ignore_index: int | None) -> int:
    return DEFAULT_IGNORE_INDEX if ignore_index is None else ignore_index


def _classes(
    spec: CandidateSpec, dataset: Dataset, num_classes: int, labels_file: str | os.PathLike[str] | None
) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Class names and colors: the labels file's, the set's, the model's, or defaults; checked against the model."""
    from segdeploy.bundle.layout import palette, read_labels

    if dataset.labels is not None and len(dataset.labels) != num_classes:
        raise UserInputError(
            f"{dataset.description} has {len(dataset.labels)} classes but the model predicts {num_classes}"
        )
    if labels_file is not None:
        labels: tuple[str, ...] = tuple(read_labels(Path(labels_file), num_classes))
    else:
        labels = dataset.labels or (spec.labels if spec.labels and len(spec.labels) == num_classes else ())
        labels = labels or tuple(f"class_{i}" for i in range(num_classes))
    colors = dataset.colors or (spec.colors if spec.colors and len(spec.colors) >= num_classes else None)
    colors = tuple(colors or palette(num_classes))[:num_classes]
    return labels, tuple(tuple(int(v) for v in c) for c in colors)  # type: ignore[misc]
