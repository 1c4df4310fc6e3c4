"""Resolve what the user names into a module: a zoo name or ``path/to/file.py:factory``; rebuild a file's model.

A model is built with its initial weights drawn from a seeded torch generator (``DEFAULT_INIT_SEED``), the
global random state saved and restored around the build, so the same name and options give the same weights
in every process; an export records that seed, or the checkpoint's path and sha256, and ``rebuild_model``
uses them to rebuild exactly the model a file came from.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy.errors import CheckpointError, UserInputError

if TYPE_CHECKING:
    from torch import nn

    from segdeploy.artifact import Metadata
    from segdeploy.models._registry import ModelInfo

DEFAULT_INIT_SEED = 0
"""The torch seed a model's initial weights are drawn with when no other is asked for."""


@dataclass
class LoadedModel:
    """A module ready to export, with what is known about it.

    ``weights``/``weights_sha256`` name the checkpoint loaded (None: none); ``init_seed`` is the seed the
    initial weights were drawn with (None: built outside segdeploy); ``notes`` say what a rebuild could not
    guarantee.
    """

    module: nn.Module
    name: str
    info: ModelInfo | None  # None for user modules
    num_classes: int
    in_channels: int
    min_size: int
    rewrites_hint: tuple[str, ...] = ()
    source: str = "zoo"  # "zoo", "file" (file.py:factory) or "object" (a module given from Python)
    weights: str | None = None
    weights_sha256: str | None = None
    init_seed: int | None = None
    notes: list[str] = field(default_factory=list)


def main_output(output: Any) -> Any:
    """The segmentation output of a model's result: a tensor, a dict's ``"out"`` entry, or a tuple's first.

    Models return auxiliary heads or side outputs beside the logits (PSPNet's aux in training,
    U2-Net's side maps, torchvision-style dicts); every consumer takes the main one this way.
    """
    if isinstance(output, dict):
        return main_output(output["out"] if "out" in output else next(iter(output.values())))
    if isinstance(output, (tuple, list)):
        return main_output(output[0])
    return output


def is_user_spec(spec: str) -> bool:
    """``file.py:factory`` names a user module; anything else a zoo model."""
    return ".py:" in spec or spec.endswith(".py")


def load_model(
    spec: str,
    *,
    num_classes: int = 21,
    in_channels: int = 3,
    weights: str | os.PathLike[str] | None = None,
    seed: int = DEFAULT_INIT_SEED,
    **config: Any,
) -> LoadedModel:
    """Build the model named by ``spec`` and load ``weights`` into it.

    Args:
        spec: a zoo name (``segnet``) or ``path/to/file.py:factory`` where
            ``factory`` is a class or function returning an ``nn.Module``.
        num_classes, in_channels: passed to zoo builders; for user factories
            only when their signature accepts them.
        weights: optional checkpoint loaded with ``weights_only=True``.
        seed: the seed of the initial weights (torch, numpy and ``random`` are seeded for the build
            and restored after it, so the caller's random state neither decides nor feels it).

    Raises:
        UserInputError: unknown name, missing file or factory, factory that fails
            or does not return an ``nn.Module``.
        CheckpointError: the checkpoint is unreadable or does not fit.
    """
    from torch import nn

    from segdeploy.checkpoints import load_weights
    from segdeploy.fileio import sha256_file
    from segdeploy.models import create_model, model_info

    if is_user_spec(spec):
        with seeded(seed):
            module = _build_user_module(spec, num_classes=num_classes, in_channels=in_channels, **config)
        info = None
        name = spec  # the spec itself, so that `segdeploy verify` can rebuild the module
        min_size = 1
    else:
        info = model_info(spec)
        with seeded(seed):
            module = create_model(spec, num_classes=num_classes, in_channels=in_channels, **config)
        name = spec
        min_size = info.min_size
    if not isinstance(module, nn.Module):
        raise UserInputError(f"{spec} did not return a torch.nn.Module (got {type(module).__name__})")
    if weights is not None:
        load_weights(module, weights)
    module.eval()
    return LoadedModel(
        module=module,
        name=name,
        info=info,
        num_classes=num_classes,
        in_channels=in_channels,
        min_size=min_size,
        rewrites_hint=info.rewrites if info else (),
        source="zoo" if info else "file",
        weights=os.fspath(weights) if weights is not None else None,
        weights_sha256=sha256_file(weights) if weights is not None else None,
        init_seed=seed,
    )


def provenance(loaded: LoadedModel) -> dict[str, Any]:
    """What an export records to rebuild ``loaded``: the ``Metadata`` fields ``weights``, ``weights_path``,
    ``weights_sha256``, ``init_seed`` and ``torch_version``."""
    import torch

    return {
        "weights": loaded.weights,
        "weights_path": str(Path(loaded.weights).resolve()) if loaded.weights else None,
        "weights_sha256": loaded.weights_sha256,
        "init_seed": loaded.init_seed,
        "torch_version": torch.__version__,
    }


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Draw from torch, numpy and ``random`` seeded with ``seed`` inside the block; their state is restored after.

    Initial weights then depend on the seed alone: not on what ran before, and the caller's random
    streams continue as if the build had not happened.
    """
    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def rebuild_model(
    metadata: Metadata,
    *,
    where: str,
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    config: dict[str, Any] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> LoadedModel:
    """The PyTorch model a segdeploy file was exported from, rebuilt from its metadata.

    ``verify`` and ``eval``'s ``pytorch`` candidate use it. What is given overrides the metadata.
    Without ``weights``, the checkpoint the file records is used, found where it was given, at its
    absolute path at export, or beside ``file``, and only if its sha256 still matches; a file exported
    without a checkpoint is rebuilt from its recorded seed.

    Args:
        metadata: the file's metadata.
        where: how messages name the file.
        model, weights, num_classes, in_channels, config: overrides (``model`` is a zoo name or file.py:factory).
        file: the file's path: a recorded checkpoint is also looked for in its directory.

    Returns:
        The model; its ``notes`` say what the rebuild cannot guarantee (another torch version, another checkpoint).

    Raises:
        UserInputError: the file was exported from a Python object or names no architecture, or its
            checkpoint moved or changed, or it records neither a checkpoint nor a seed (each: pass --weights).
        CheckpointError: the checkpoint is unreadable or does not fit.
    """
    import torch

    if model is None and metadata.source == "object":
        raise UserInputError(
            f"{where} was exported from a Python object ({metadata.architecture}): verify it from Python with "
            "segdeploy.verify.verify(path, module, shapes=...), or pass --model file.py:factory"
        )
    spec = model or metadata.architecture
    if not spec:
        raise UserInputError(f"{where} names no architecture in its metadata: pass --model NAME or file.py:factory")
    notes: list[str] = []
    if weights is not None:
        notes += _other_checkpoint_note(metadata, weights)
    elif metadata.weights:
        weights = find_recorded_weights(metadata, where=where, file=file)
    elif metadata.init_seed is None and model is None:
        raise UserInputError(
            f"{where} records neither the checkpoint it was exported with nor the seed of its initial weights "
            "(an older segdeploy wrote it): pass --weights CHECKPOINT"
        )
    elif metadata.torch_version and metadata.torch_version != torch.__version__:
        notes.append(
            f"the initial weights are redrawn from seed {metadata.init_seed} with torch {torch.__version__}; the "
            f"file was exported with torch {metadata.torch_version}, which may draw them differently"
        )
    loaded = load_model(
        spec,
        num_classes=num_classes or metadata.num_classes or 21,
        in_channels=in_channels or metadata.in_channels or 3,
        weights=weights,
        seed=metadata.init_seed if metadata.init_seed is not None else DEFAULT_INIT_SEED,
        **(config if config is not None else metadata.config if model is None else {}),
    )
    loaded.notes.extend(notes)
    return loaded


def find_recorded_weights(metadata: Metadata, *, where: str, file: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint ``metadata`` records, where it is now: as given, at its absolute path at export, or
    beside ``file``; the first whose sha256 matches the recorded one.

    Raises:
        UserInputError: no such file is left, or its content changed; one line asking for ``--weights``.
    """
    from segdeploy.fileio import sha256_file

    given = Path(metadata.weights or "")
    candidates = [given]
    if metadata.weights_path:
        candidates.append(Path(metadata.weights_path))
    if file is not None:
        beside = Path(file).parent
        candidates += [beside / given, beside / given.name]
    seen: list[Path] = []
    for path in candidates:
        if path in seen or not path.is_file():
            continue
        seen.append(path)
        if not metadata.weights_sha256 or sha256_file(path) == metadata.weights_sha256:
            return path
    if seen:
        raise UserInputError(
            f"{where} was exported with checkpoint {given}, and {seen[0]} has changed since (sha256 differs): "
            "pass --weights with the checkpoint the file was exported with"
        )
    looked = ", ".join(dict.fromkeys(str(p) for p in candidates))
    raise UserInputError(
        f"{where} was exported with checkpoint {given}, which is no longer there (looked for {looked}): "
        "pass --weights PATH"
    )


def _other_checkpoint_note(metadata: Metadata, weights: str | os.PathLike[str]) -> list[str]:
    """A note when ``--weights`` is not the checkpoint the file records (a failure then may be the weights')."""
    from segdeploy.fileio import sha256_file

    path = Path(weights)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if metadata.weights_sha256 is None:
        if metadata.init_seed is not None:
            return [f"the file was exported with its initial weights (seed {metadata.init_seed}), not with {path}"]
        return []
    if sha256_file(path) != metadata.weights_sha256:
        return [f"{path} is not the checkpoint the file was exported with: that was {metadata.weights}, sha256 differs"]
    return []


def _build_user_module(spec: str, **kwargs: Any) -> Any:
    if ":" not in spec:
        raise UserInputError(f"bad model {spec!r}: name the factory as path/to/file.py:factory")
    file_part, factory_name = spec.rsplit(":", 1)
    path = Path(file_part)
    if not path.is_file():
        raise UserInputError(f"model file {path} does not exist")
    module_name = f"segdeploy_user_{abs(hash(str(path.resolve())))}"
    loader_spec = importlib.util.spec_from_file_location(module_name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise UserInputError(f"cannot import {path} as a Python module")
    py_module = importlib.util.module_from_spec(loader_spec)
    sys.modules[module_name] = py_module
    try:
        loader_spec.loader.exec_module(py_module)
    except Exception as exc:  # the user's file: report its error in one line
        sys.modules.pop(module_name, None)
        raise UserInputError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(py_module, factory_name, None)
    if factory is None or not callable(factory):
        found = [n for n, v in vars(py_module).items() if callable(v) and not n.startswith("_")]
        raise UserInputError(f"{path} has no callable {factory_name!r}; it defines: {', '.join(found) or 'nothing'}")
    accepted = _accepted_kwargs(factory, kwargs)
    try:
        return factory(**accepted)
    except Exception as exc:
        raise UserInputError(f"{spec} failed to build the model: {type(exc).__name__}: {exc}") from exc


def _accepted_kwargs(factory: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}
