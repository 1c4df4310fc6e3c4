"""Shared test setup: deterministic, single-threaded torch.

Test models are tiny: with several threads OpenMP spends more time waiting at
every op than computing (measured: a small U2-Net forward took 4-8 s with 2
threads on a loaded 2-core machine, 0.09 s with 1).
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """segdeploy's cache (exports, engines, the zoo listing) in a temporary directory: tests never touch the user's."""
    import os

    previous = os.environ.get("SEGDEPLOY_CACHE")
    os.environ["SEGDEPLOY_CACHE"] = str(tmp_path_factory.mktemp("segdeploy-cache"))
    yield
    if previous is None:
        os.environ.pop("SEGDEPLOY_CACHE", None)
    else:
        os.environ["SEGDEPLOY_CACHE"] = previous


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


# The deployment-bundle test files share these (tests/bundle_helpers.py builds them); a module may override one.
@pytest.fixture(scope="session")
def onnx_files(tmp_path_factory):
    """The exports bundles are made of, one per flavour."""
    from bundle_helpers import exports_for

    return exports_for(tmp_path_factory)


@pytest.fixture(scope="session")
def bundles(tmp_path_factory):
    """A bundle per flavour, written once per session."""
    from bundle_helpers import bundles_for

    return bundles_for(tmp_path_factory)


@pytest.fixture
def copy_of(bundles, tmp_path):
    """A function that copies one of ``bundles`` into this test's directory, to tamper with."""
    from bundle_helpers import copy_maker

    return copy_maker(bundles, tmp_path)


class CodeRunningPayload:
    """Unpickling this calls ``open(marker, "w")``: proof of code execution if the file appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def code_running_payload(tmp_path):
    """A ``(payload, marker)`` pair: ``marker`` exists afterwards only if ``payload`` was unpickled."""
    marker = tmp_path / "pwned"
    return CodeRunningPayload(str(marker)), marker
