"""``--ray``: work spread over a Ray cluster (an existing one, or a local one started here).

Ray is the engine. ``run_on_ray`` starts one actor per worker; each actor builds its worker object once
(``predict``'s ``Predictor`` or ``eval``'s ``Evaluator``: one runner per candidate, opened at the first
chunk) and then takes chunks of the inputs through ``ray.util.ActorPool``. Workers read the files where
they lie: the paths must be visible to them (a shared filesystem, or a one-machine cluster). The caller
merges what the chunks return (eval sums confusion matrices, exact in any order); this module knows
nothing of what the workers do.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from segdeploy.errors import MissingDependencyError, SegdeployError, UserInputError, first_line

TASKS_PER_WORKER = 4
"""The inputs are cut into about this many chunks per worker: late chunks even out uneven workers."""
MAX_CHUNK = 64


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide to run.

    Attributes:
        address: an existing cluster (``ray://host:10001`` or ``host:6379``); None starts a local one.
        workers: actors (default: the cluster's CPUs / ``cpus_per_worker``, at most one per chunk).
        cpus_per_worker: CPUs reserved per actor; its runners use that many threads.
        gpus_per_worker: GPUs per actor (default: 1 when a candidate runs on TensorRT, else 0).
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


def ray_module() -> Any:
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise MissingDependencyError("--ray needs Ray: pip install 'segdeploy[ray]'") from None
    return ray


@contextmanager
def cluster(options: RayOptions) -> Iterator[Any]:
    """Ray connected to ``options.address``, or a local cluster (shut down on exit).

    An already initialized Ray (a caller's) is used as it is and left running.

    Raises:
        UserInputError: no cluster at the address.
    """
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if options.address:
            ray.init(address=options.address, **quiet)
        else:
            cpus = max(int(math.ceil((options.workers or 0) * options.cpus_per_worker)), 0) or os.cpu_count() or 1
            ray.init(num_cpus=cpus, include_dashboard=False, **quiet)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = options.address or "a new local cluster"
        raise UserInputError(f"cannot start or reach a Ray cluster at {where}: {first_line(exc)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


class ChunkWorker:
    """A Ray actor: builds its worker object once, from a picklable factory, and runs chunks on it."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.target: Any = None

    def run(self, chunk: list[Any]) -> tuple[int, Any]:
        if self.target is None:
            self.target = self.factory().__enter__()
        return len(chunk), self.target.run(chunk)


def chunks(items: Sequence[Any], workers: int, whole: Callable[[Any], bool] | None = None) -> list[list[Any]]:
    """Items cut into about ``TASKS_PER_WORKER`` chunks per worker; an item ``whole`` says so is a chunk alone."""
    alone = [[item] for item in items if whole is not None and whole(item)]
    rest = [item for item in items if whole is None or not whole(item)]
    size = max(1, min(MAX_CHUNK, math.ceil(len(rest) / (max(workers, 1) * TASKS_PER_WORKER))))
    return [rest[i : i + size] for i in range(0, len(rest), size)] + alone


def run_on_ray(
    factory: Callable[[], Any],
    items: Sequence[Any],
    options: RayOptions,
    *,
    needs_gpu: bool = False,
    whole: Callable[[Any], bool] | None = None,
) -> Iterator[tuple[int, Any]]:
    """``factory().run(chunk)`` for chunks of ``items`` on Ray actors: ``(len(chunk), result)`` as each finishes.

    Args:
        factory: builds a worker object (a context manager with ``run(chunk)``); pickled to every actor.
        items: what to spread (picklable).
        options: the cluster and the workers' size.
        needs_gpu: a runner needs a GPU (TensorRT): actors get one unless ``options`` says otherwise.
        whole: items that run as a chunk of their own (a video: its frames stay in order on one worker).

    Raises:
        MissingDependencyError: Ray is not installed.
        UserInputError: no cluster, or a worker's input error (raised as the worker raised it).
    """
    from ray.util import ActorPool

    gpus = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if needs_gpu else 0.0)
    with cluster(options) as ray:
        available = int(float(ray.cluster_resources().get("CPU", 1)) // max(options.cpus_per_worker, 1e-9))
        count = max(1, min(options.workers or available or 1, len(items) or 1))
        pieces = chunks(items, count, whole)
        remote = ray.remote(num_cpus=options.cpus_per_worker, num_gpus=gpus)(ChunkWorker)
        actors = [remote.remote(factory) for _ in range(min(count, len(pieces)) or 1)]
        pool = ActorPool(actors)
        for piece in pieces:
            pool.submit(lambda actor, chunk: actor.run.remote(chunk), piece)
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
