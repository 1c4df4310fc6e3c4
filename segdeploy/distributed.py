"""``--ray``: predict and eval spread over a Ray cluster (an existing one, or a local one started here).

Ray is the engine: each worker is a Ray actor that opens one runner per candidate once and then takes
chunks of the set through ``ray.util.ActorPool``. Workers read the images where they lie (the paths
must be visible to them, as on a shared filesystem or a one-machine cluster); eval workers return
``EvalPartial``s whose confusion matrices are summed exactly, so the scores equal the one-process run's;
predict workers run the same ``Predictor`` and write the same files into the output directory.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError, first_line

if TYPE_CHECKING:
    from segdeploy.candidates import CandidateSpec
    from segdeploy.datasets import Sample
    from segdeploy.evaluate import EvalOptions, EvalPartial
    from segdeploy.predict import PredictInput, PredictOptions, PredictSummary

TASKS_PER_WORKER = 4
"""The set is cut into about this many chunks per worker: late chunks balance uneven workers."""
MAX_CHUNK = 64


def ray_module() -> Any:
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--ray needs Ray: pip install 'segdeploy[ray]'") from None
    return ray


@contextmanager
def cluster(address: str | None, workers: int | None) -> Iterator[Any]:
    """Ray connected to ``address``, or a local cluster of ``workers`` CPUs (shut down on exit).

    An already initialized Ray (a caller's) is used as it is and left running.

    Raises:
        UserInputError: no cluster at ``address``.
    """
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:
            ray.init(
                num_cpus=workers or os.cpu_count() or 1, include_dashboard=False, logging_level=logging.ERROR,
                log_to_driver=False,
            )  # fmt: skip
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserInputError(
            f"cannot connect to a Ray cluster at {address or 'a new local cluster'}: {first_line(exc)}"
        ) from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _workers(ray: Any, requested: int | None, cpus_per_worker: float, items: int) -> int:
    available = int(float(ray.cluster_resources().get("CPU", 1)) // max(cpus_per_worker, 1e-9))
    return max(1, min(requested or available or 1, items))


def _chunks(items: Sequence[Any], workers: int) -> list[list[Any]]:
    size = max(1, min(MAX_CHUNK, math.ceil(len(items) / (workers * TASKS_PER_WORKER))))
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def _run_pool(
    ray: Any, actor_class: Any, args: tuple[Any, ...], chunks: list[list[Any]], workers: int, resources: dict[str, Any]
) -> Iterator[Any]:
    """Each chunk's result, in the order workers finish them."""
    from ray.util import ActorPool

    remote = ray.remote(**resources)(actor_class)
    actors = [remote.remote(*args) for _ in range(workers)]
    pool = ActorPool(actors)
    for chunk in chunks:
        pool.submit(lambda actor, value: actor.run.remote(value), chunk)
    try:
        while pool.has_next():
            try:
                yield pool.get_next_unordered()
            except Exception as exc:  # a worker's error arrives wrapped: raise what it was
                raise _unwrap(exc) from None
    finally:
        for actor in actors:
            ray.kill(actor)


def _unwrap(exc: BaseException) -> BaseException:
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SegdeployError):
        return cause
    return SegdeployError(f"a Ray worker failed: {first_line(cause or exc)}")


def _resources(specs: Sequence[CandidateSpec], cpus_per_worker: float, gpus_per_worker: float | None) -> dict[str, Any]:
    from segdeploy.artifact import Runtime

    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if any(spec.runtime is Runtime.TRT for spec in specs) else 0.0
    return {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}


# --------------------------------------------------------------------------- eval
class EvalWorker:
    """A Ray actor: one ``Evaluator`` (a runner per candidate), opened at its first chunk."""

    def __init__(self, specs: Sequence[CandidateSpec], options: EvalOptions, threads: int) -> None:
        self.specs, self.options, self.threads = list(specs), options, threads
        self.evaluator: Any = None

    def run(self, samples: list[Sample]) -> tuple[int, EvalPartial]:
        from segdeploy.evaluate import Evaluator

        if self.evaluator is None:
            self.evaluator = Evaluator(self.specs, self.options, self.threads).__enter__()
        return len(samples), self.evaluator.run(samples)


def ray_evaluate(
    specs: Sequence[CandidateSpec],
    samples: Sequence[Sample],
    options: EvalOptions,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> EvalPartial:
    """Score ``samples`` on a Ray cluster; the merged partial equals the one-process run's exactly.

    Args:
        specs, samples, options: as ``Evaluator`` takes them.
        address: an existing cluster (``ray://host:10001`` or ``host:6379``); None starts a local one.
        workers: actors (default: the cluster's CPUs / ``cpus_per_worker``).
        cpus_per_worker: CPUs per actor (and its runners' threads).
        gpus_per_worker: GPUs per actor (default 1 when a candidate runs on TensorRT, else 0).
        progress: called with the images of each finished chunk.

    Raises:
        MissingDependencyError: Ray is not installed.
        UserInputError: no cluster, or a worker's input error (raised as the worker raised it).
    """
    from segdeploy.evaluate import EvalPartial

    merged = EvalPartial.empty(len(specs), options.num_classes, options.worst)
    with cluster(address, workers) as ray:
        count = _workers(ray, workers, cpus_per_worker, len(samples))
        chunks = _chunks(samples, count)
        threads = max(1, int(cpus_per_worker))
        resources = _resources(specs, cpus_per_worker, gpus_per_worker)
        for done, partial in _run_pool(ray, EvalWorker, (list(specs), options, threads), chunks, count, resources):
            merged.merge(partial)
            if progress:
                progress(done)
    return merged


# --------------------------------------------------------------------------- predict
class PredictWorker:
    """A Ray actor: one ``Predictor`` (one runner), opened at its first chunk."""

    def __init__(self, spec: CandidateSpec, options: PredictOptions, threads: int) -> None:
        self.spec, self.options, self.threads = spec, options, threads
        self.predictor: Any = None

    def run(self, items: list[PredictInput]) -> tuple[int, PredictSummary]:
        from segdeploy.predict import Predictor

        if self.predictor is None:
            self.predictor = Predictor(self.spec, self.options, self.threads).__enter__()
        summary = self.predictor.run(items)
        return summary.images + summary.frames, summary


def ray_predict(
    spec: CandidateSpec,
    items: Sequence[PredictInput],
    options: PredictOptions,
    *,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    progress: Callable[[int, str], None] | None = None,
) -> PredictSummary:
    """Predict on a Ray cluster: images in chunks, each video whole on one worker; the same files as locally.

    Args: as ``ray_evaluate``; ``options.out_dir`` must be writable by the workers at the same path.

    Raises:
        MissingDependencyError: Ray is not installed.
        UserInputError: no cluster, or a worker's input error.
    """
    from segdeploy.predict import PredictSummary

    summary = PredictSummary()
    images = [item for item in items if item.kind == "image"]
    videos = [[item] for item in items if item.kind == "video"]
    with cluster(address, workers) as ray:
        count = _workers(ray, workers, cpus_per_worker, len(images) + len(videos))
        chunks = _chunks(images, count) + videos
        threads = max(1, int(cpus_per_worker))
        resources = _resources([spec], cpus_per_worker, gpus_per_worker)
        for frames, part in _run_pool(ray, PredictWorker, (spec, options, threads), chunks, count, resources):
            summary.merge(part)
            if progress:
                progress(frames, f"{summary.images} images, {summary.videos} videos")
    summary.files.sort()
    return summary
