"""Shared test setup: deterministic, single-threaded torch so 2-core CI stays predictable."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    yield
