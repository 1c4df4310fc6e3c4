"""The model registry: names -> builders, with what export needs to know."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture.

    Attributes:
        name: registry name, e.g. ``"segnet"``.
        paper: short citation of the paper the model follows.
        builder: keyword-only function returning the ``nn.Module``.
        rewrites: names of the export rewrites the model needs (``segdeploy.export.rewrites``).
        min_size: the smallest height/width the model accepts.
        test_config: keyword arguments that make a small, fast version for tests.
        index_unpooling: the model unpools with max-pool indices. Where a pooling window holds
            near-equal values, float noise between runtimes can pick another position and move a
            whole value to a neighbouring pixel, so ONNX parity is judged by argmax agreement and a
            high error percentile rather than by the largest error.
    """

    name: str
    paper: str
    builder: Callable[..., nn.Module]
    rewrites: tuple[str, ...] = ()
    min_size: int = 32
    test_config: dict[str, Any] = field(default_factory=dict)
    index_unpooling: bool = False


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str,
    rewrites: tuple[str, ...] = (),
    min_size: int = 32,
    test_config: dict[str, Any] | None = None,
    index_unpooling: bool = False,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a builder ``fn(*, num_classes, in_channels, **config)`` under ``name``."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name,
            paper=paper,
            builder=builder,
            rewrites=tuple(rewrites),
            min_size=min_size,
            test_config=dict(test_config or {}),
            index_unpooling=index_unpooling,
        )
        return builder

    return decorate


def registered() -> dict[str, ModelInfo]:
    return _REGISTRY


def unknown_model_error(name: str, known: list[str]) -> UserInputError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserInputError(f"unknown model {name!r}{hint}; known models: {', '.join(known)}")
