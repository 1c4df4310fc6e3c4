"""How many threads PyTorch's own runs may use here: no more than the CPUs other processes leave idle.

segdeploy runs models in PyTorch during export (the size rule's confirming run) and verification
(the float32 and float64 reference). PyTorch's OpenMP threads meet at a barrier after every op; when
another process holds one of their CPUs, each op waits for a descheduled thread. On a 2-CPU machine
at load average 2.2 a SegNet forward at 257x259 took 1.6 s with 2 threads and 0.57 s with 1 (float64:
3.0 s and 2.1 s), a forward at 32x32 0.67 s and 0.03 s; ONNX Runtime's own thread pool did not slow
down. The outputs are PyTorch's float32 and float64 either way; only the time changes.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator


def idle_cpus() -> int:
    """The CPUs this process may use that other processes leave idle (at least 1).

    The 1-minute load average counts this process too (it is running); what is left of the CPUs it
    may run on after the rest of the load is what its threads can have without waiting on each other.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        others = max(os.getloadavg()[0] - 1.0, 0.0)
    except (AttributeError, OSError):  # no load average on this platform
        return cpus
    return max(1, min(cpus, math.floor(cpus - others + 0.5)))


@contextlib.contextmanager
def fitted_threads() -> Iterator[int]:
    """PyTorch's intra-op threads limited to ``idle_cpus()`` inside the block (never raised), then restored.

    Yields:
        The number of threads in use.
    """
    import torch

    before = torch.get_num_threads()
    threads = min(before, idle_cpus())
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
            torch.set_num_threads(before)
