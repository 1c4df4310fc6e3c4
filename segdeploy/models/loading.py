"""Resolve what the user names into a module: a zoo name or ``path/to/file.py:factory``."""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    from torch import nn

    from segdeploy.artifact import Metadata
    from segdeploy.models._registry import ModelInfo


@dataclass
class LoadedModel:
    """A module ready to export, with what is known about it."""

    module: nn.Module
    name: str
    info: ModelInfo | None  # None for user modules
    num_classes: int
    in_channels: int
    min_size: int
    rewrites_hint: tuple[str, ...] = ()
    source: str = "zoo"  # "zoo", "file" (file.py:factory) or "object" (a module given from Python)


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
    **config: Any,
) -> LoadedModel:
    """Build the model named by ``spec`` and load ``weights`` into it.

    Args:
        spec: a zoo name (``segnet``) or ``path/to/file.py:factory`` where
            ``factory`` is a class or function returning an ``nn.Module``.
        num_classes, in_channels: passed to zoo builders; for user factories
            only when their signature accepts them.
        weights: optional checkpoint loaded with ``weights_only=True``.

    Raises:
        UserInputError: unknown name, missing file or factory, factory that fails
            or does not return an ``nn.Module``.
        CheckpointError: the checkpoint is unreadable or does not fit.
    """
    from torch import nn

    from segdeploy.checkpoints import load_weights
    from segdeploy.models import create_model, model_info

    if is_user_spec(spec):
        module = _build_user_module(spec, num_classes=num_classes, in_channels=in_channels, **config)
        info = None
        name = spec  # the spec itself, so that `segdeploy verify` can rebuild the module
        min_size = 1
    else:
        info = model_info(spec)
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
    )


def rebuild_model(
    metadata: Metadata,
    *,
    where: str,
    model: str | None = None,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int | None = None,
    in_channels: int | None = None,
    config: dict[str, Any] | None = None,
) -> LoadedModel:
    """The PyTorch model a segdeploy file was exported from, rebuilt from its metadata.

    ``verify`` and ``eval``'s ``pytorch`` candidate use it. What is given overrides the metadata.

    Args:
        metadata: the file's metadata.
        where: how messages name the file.
        model, weights, num_classes, in_channels, config: overrides (``model`` is a zoo name or file.py:factory).

    Raises:
        UserInputError: the file was exported from a Python object or names no architecture.
        CheckpointError: the checkpoint is unreadable or does not fit.
    """
    if model is None and metadata.source == "object":
        raise UserInputError(
            f"{where} was exported from a Python object ({metadata.architecture}): verify it from Python with "
            "segdeploy.verify.verify(path, module, shapes=...), or pass --model file.py:factory"
        )
    spec = model or metadata.architecture
    if not spec:
        raise UserInputError(f"{where} names no architecture in its metadata: pass --model NAME or file.py:factory")
    return load_model(
        spec,
        num_classes=num_classes or metadata.num_classes or 21,
        in_channels=in_channels or metadata.in_channels or 3,
        weights=weights,
        **(config if config is not None else metadata.config if model is None else {}),
    )


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
