"""Stages that overlap: each ``prefetch`` is a background thread feeding a bounded queue.

OpenCV and Pillow decode with the GIL released, and ONNX Runtime, TensorRT and torch run with it
released, so a thread decoding the next images and a thread running the model on the previous ones
overlap with the main thread's post-processing, as a data loader's workers do; each bounded queue
keeps memory at ``depth`` items, whatever the set's size. Chained, a ``prefetch`` over another's
output closes it when it stops, so no thread outlives the run.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_DEPTH = 4
_DONE = object()


def prefetch(items: Iterable[T], load: Callable[[T], R], depth: int = DEFAULT_DEPTH) -> Iterator[R]:
    """``load(item)`` for each item, in order, computed up to ``depth`` items ahead in a background thread.

    An exception raised by ``load`` (or by iterating ``items``) is raised here, at the item it concerns.
    Leaving the loop early stops the thread.
    """
    slots: queue.Queue[object] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put(("ok", load(item))):
                    return
        except BaseException as exc:  # handed to the consumer, raised where it reads the item
            put(("error", exc))
            return
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:  # an upstream prefetch stops its own thread
                close()
        put(_DONE)

    thread = threading.Thread(target=work, name="segdeploy-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            got = slots.get()
            if got is _DONE:
                return
            kind, value = got  # type: ignore[misc]
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=5)
