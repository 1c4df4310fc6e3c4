"""Decoding ahead of the model: a bounded queue filled by one background thread.

OpenCV and Pillow decode with the GIL released, and so does ONNX Runtime while it runs, so one
thread decoding the next images while the model runs the current one takes decoding off the critical
path; the bounded queue keeps memory at ``depth`` decoded items, whatever the set's size.
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
        try:
            for item in items:
                if not put(("ok", load(item))):
                    return
        except BaseException as exc:  # handed to the consumer, raised where it reads the item
            put(("error", exc))
            return
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
