"""The model registry: names -> model classes, with what export needs to know and the options each takes.

A zoo model is registered by decorating its ``nn.Module`` class: the keyword-only arguments of its
``__init__`` (with their defaults, types and docstring) are its options, stated once. ``num_classes`` and
``in_channels`` are every model's; the others are what ``--config key=value`` sets and ``segdeploy
models`` lists. Options are checked against that signature before the class is called, so a bad
option is the user's one-line error and an exception from inside a model stays a bug.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from segdeploy.errors import UserInputError

if TYPE_CHECKING:
    from torch import nn

COMMON_OPTIONS = ("num_classes", "in_channels")
"""Arguments every model takes, given by their own parameters rather than as options."""

BACKBONE_WEIGHTS = "backbone_weights"
"""The option naming a torchvision ImageNet checkpoint to load into the model's backbone."""

M = TypeVar("M")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one architecture.

    Attributes:
        name: registry name, e.g. ``"segnet"``.
        paper: short citation of the paper the model follows.
        builder: the model class; its keyword-only ``__init__`` arguments are the options.
        rewrites: names of the export rewrites the model needs (``segdeploy.export.rewrites``).
        min_size: the smallest height/width the model accepts.
        test_config: options that make a small, fast version for tests.
        index_unpooling: the model unpools with max-pool indices. Where a pooling window holds
            near-equal values, float noise between runtimes can pick another position and move a
            whole value to a neighbouring pixel, so ONNX parity is judged by argmax agreement and a
            high error percentile rather than by the largest error.
        backbone_weights: the model takes the ``backbone_weights`` option (a torchvision ImageNet
            checkpoint for its VGG or ResNet backbone).
    """

    name: str
    paper: str
    builder: Callable[..., nn.Module]
    rewrites: tuple[str, ...] = ()
    min_size: int = 32
    test_config: dict[str, Any] = field(default_factory=dict)
    index_unpooling: bool = False
    backbone_weights: bool = False

    def options(self) -> dict[str, Any]:
        """The options (``--config key=value``) with their defaults, as JSON values."""
        options: dict[str, Any] = {}
        for name, param in _option_parameters(self.builder).items():
            default = list(param.default) if isinstance(param.default, tuple) else param.default
            options[name] = default if isinstance(default, (bool, int, float, str, list, type(None))) else repr(default)
        if self.backbone_weights:
            options[BACKBONE_WEIGHTS] = None
        return options

    def check_options(self, config: dict[str, Any]) -> None:
        """Refuse options the model does not take and values of the wrong type, naming the option.

        Values the type allows but the model refuses (a negative ``width_mult``, an unknown backbone)
        are the model's to refuse, with a ``UserInputError`` of its own.

        Raises:
            UserInputError: an unknown option (with the closest name and the list) or a value of the wrong type.
        """
        params = _option_parameters(self.builder)
        known = [*params, *([BACKBONE_WEIGHTS] if self.backbone_weights else [])]
        hints = _type_hints(self.builder)
        for key, value in config.items():
            if key in COMMON_OPTIONS:
                raise UserInputError(f"{key} is not a --config option: use --{key.replace('_', '-')}")
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                listed = ", ".join(known) or "none"
                raise UserInputError(f"unknown option {key!r} for model {self.name!r}{hint}; its options: {listed}")
            expected = hints.get(key, str | os.PathLike if key == BACKBONE_WEIGHTS else Any)
            if not _accepts(value, expected):
                raise UserInputError(
                    f"bad option {key}={value!r} for model {self.name!r}: expected {_describe(expected)}"
                )


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    paper: str,
    rewrites: tuple[str, ...] = (),
    min_size: int = 32,
    test_config: dict[str, Any] | None = None,
    index_unpooling: bool = False,
    backbone_weights: bool = False,
) -> Callable[[M], M]:
    """Class decorator registering a model ``cls(*, num_classes, in_channels, **options)`` under ``name``."""

    def decorate(builder: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        info = ModelInfo(
            name=name,
            paper=paper,
            builder=builder,  # type: ignore[arg-type]
            rewrites=tuple(rewrites),
            min_size=min_size,
            test_config=dict(test_config or {}),
            index_unpooling=index_unpooling,
            backbone_weights=backbone_weights,
        )
        missing = [p for p in COMMON_OPTIONS if p not in inspect.signature(builder).parameters]  # type: ignore[arg-type]
        if missing:
            raise TypeError(f"model {name!r} must take {', '.join(missing)}")
        info.check_options(info.test_config)
        _REGISTRY[name] = info
        return builder

    return decorate


def registered() -> dict[str, ModelInfo]:
    return _REGISTRY


def unknown_model_error(name: str, known: list[str]) -> UserInputError:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return UserInputError(f"unknown model {name!r}{hint}; known models: {', '.join(known)}")


# --------------------------------------------------------------------------- option signatures
def _option_parameters(builder: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    return {
        name: param
        for name, param in inspect.signature(builder).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name not in COMMON_OPTIONS
    }


def _type_hints(builder: Callable[..., Any]) -> dict[str, Any]:
    """The evaluated annotations of the builder's arguments (empty where they cannot be evaluated)."""
    target = builder.__init__ if inspect.isclass(builder) else builder
    try:
        return typing.get_type_hints(target)
    except Exception:  # an annotation naming something imported only for type checkers: no type check
        return {}


def _accepts(value: Any, hint: Any) -> bool:
    """Whether ``value`` (a JSON value from ``--config`` or Python) fits the annotation ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is os.PathLike or origin is os.PathLike:
        return isinstance(value, os.PathLike)
    if origin in (collections.abc.Sequence, list, tuple):
        item = args[0] if args else Any
        return isinstance(value, (list, tuple)) and all(_accepts(v, item) for v in value)
    return True  # any other type: the model checks the value itself


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arm) for arm in args))
    if origin in (collections.abc.Sequence, list, tuple):
        plural = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
        return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    if hint is os.PathLike or origin is os.PathLike:
        return "a path"
    return names.get(hint, getattr(hint, "__name__", str(hint)))
