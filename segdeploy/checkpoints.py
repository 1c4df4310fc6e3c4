"""Loading checkpoints safely: ``weights_only=True``, common wrappers, clear mismatches.

Training code saves weights in many shapes: nested under ``state_dict``/``model``/..., with the prefix of
a wrapper (``module.`` from DataParallel/DDP, ``_orig_mod.`` from ``torch.compile``, ``model.`` from a
Lightning module), or several of those nested. A prefix is stripped only when that makes the keys fit the
model's own better; a model whose own keys start with ``model.`` (``self.model = inner``) keeps them.
What is accepted then is exactly what ``load_state_dict(strict=True)`` accepts: torch itself decides
(it tolerates, for one, a missing ``num_batches_tracked`` in a checkpoint saved without it).
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segdeploy.errors import CheckpointError, first_line

if TYPE_CHECKING:
    import torch
    from torch import nn

# Keys under which training scripts commonly nest the weights.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights", "params")
# Prefixes added by DataParallel/DDP, torch.compile and Lightning.
_PREFIXES = ("module.", "_orig_mod.", "model.")
_MAX_NESTING = 3


def load_checkpoint(path: str | os.PathLike[str], *, keys: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing anything in it.

    The file is loaded with ``torch.load(weights_only=True)``: a pickle that
    would call arbitrary code is refused. Wrappers such as ``{"state_dict": ...}``
    or ``{"model": ...}`` are unwrapped.

    Args:
        path: the checkpoint.
        keys: the state-dict keys of the module it is meant for: wrapper prefixes are stripped only where
            that makes more keys match them (see ``fit_prefixes``). Without them, a prefix of ``_PREFIXES``
            that every key carries is stripped.

    Returns:
        The tensors (an ``OrderedDict`` keeping torch's ``_metadata`` when the file has it).

    Raises:
        CheckpointError: missing, empty, corrupt or untrusted file, or no tensors in it.
    """
    state = _read(Path(path))
    if keys is None:
        return _strip(state, _shared_prefixes(list(state)))
    return _strip(state, fit_prefixes(list(state), set(keys)))


def _shared_prefixes(keys: list[str]) -> tuple[str, ...]:
    """The prefixes of ``_PREFIXES`` every key carries, in that order (each stripped once)."""
    shared: list[str] = []
    for prefix in _PREFIXES:
        if keys and all(k.startswith(prefix) for k in keys):
            shared.append(prefix)
            keys = [k[len(prefix) :] for k in keys]
    return tuple(shared)


def fit_prefixes(state_keys: list[str], own_keys: set[str]) -> tuple[str, ...]:
    """The wrapper prefixes to strip, outermost first, so that ``state_keys`` fit ``own_keys`` best.

    Every nesting of ``_PREFIXES`` that all keys carry is a candidate; the one that makes the most keys
    match the model's own wins, and stripping nothing wins ties: keys that already match are never touched.
    When no candidate matches any key (weights of another model), the shared prefixes go, so that the
    mismatch message names the keys as the model would.
    """
    best: tuple[str, ...] = ()
    best_score = _overlap(state_keys, own_keys)
    if not best_score:
        best = _shared_prefixes(state_keys)
    frontier: list[tuple[tuple[str, ...], list[str]]] = [((), state_keys)]
    for _ in range(_MAX_NESTING):
        grown = []
        for stripped, keys in frontier:
            for prefix in _PREFIXES:
                if keys and all(k.startswith(prefix) for k in keys):
                    inner = [k[len(prefix) :] for k in keys]
                    candidate = (*stripped, prefix)
                    score = _overlap(inner, own_keys)
                    if score > best_score:
                        best, best_score = candidate, score
                    grown.append((candidate, inner))
        frontier = grown
    return best


def _overlap(keys: list[str], own: set[str]) -> int:
    return sum(k in own for k in keys)


def _strip(state: dict[str, Any], prefixes: tuple[str, ...]) -> dict[str, Any]:
    """``state`` with ``prefixes`` removed from its keys, and from its ``_metadata`` module names."""
    if not prefixes:
        return state
    joined = "".join(prefixes)
    out: OrderedDict[str, Any] = OrderedDict((k[len(joined) :], v) for k, v in state.items())
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        module = joined[:-1]  # "module._orig_mod." -> the module "module._orig_mod"
        out._metadata = OrderedDict(  # type: ignore[attr-defined]
            ("" if name == module else name[len(joined) :], value)
            for name, value in metadata.items()
            if name == module or name.startswith(joined)
        )
    return out


def _read(file: Path) -> dict[str, torch.Tensor]:
    import torch

    if not file.is_file():
        raise CheckpointError(f"checkpoint {file} does not exist")
    if file.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {file} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols; our error says enough
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only refuses any global it does not trust: that is an untrusted file, not a corrupt one.
        untrusted = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if untrusted:
            raise CheckpointError(
                f"checkpoint {file} was refused: loading it would run code ({untrusted.group(1)}); "
                "segdeploy only loads plain weights (torch.load weights_only=True)"
            ) from None
        operand = re.search(r"Unsupported operand \d+", str(exc))
        reason = operand.group(0) if operand else "not a weights-only pickle"
        raise CheckpointError(f"checkpoint {file} is corrupt or not a PyTorch weights file: {reason}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        reason = first_line(exc)
        raise CheckpointError(f"checkpoint {file} is corrupt or not a PyTorch file: {reason}") from None
    return _unwrap(obj, file)


def _unwrap(obj: Any, file: Path) -> dict[str, torch.Tensor]:
    import torch

    if isinstance(obj, dict):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"checkpoint {file} holds no state dict (found {type(obj).__name__})")
    tensors: OrderedDict[str, Any] = OrderedDict(
        (k, v) for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)
    )
    if not tensors:
        raise CheckpointError(f"checkpoint {file} holds no tensors")
    metadata = getattr(obj, "_metadata", None)
    if isinstance(metadata, dict):
        tensors._metadata = metadata  # type: ignore[attr-defined]  # torch's per-module versions
    return tensors


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` and return the model.

    Wrapper prefixes are stripped where that makes the keys fit (``load_checkpoint``); then
    ``model.load_state_dict`` decides what is missing or unexpected, so exactly what
    ``load_state_dict(strict=True)`` accepts loads.

    Raises:
        CheckpointError: unreadable file, or (with ``strict``) missing/unexpected
            keys or shape conflicts, each named in one line.
    """
    own = model.state_dict()
    state = load_checkpoint(path, keys=own)
    if mismatch_problems(state, own, strict=False):  # torch would raise many lines after loading part of it
        optional = _tolerated_missing(state, own) if strict else tuple(own)
        problems = mismatch_problems(state, own, strict=strict, optional_keys=optional)
        raise CheckpointError(f"checkpoint {path} does not fit the model; " + "; ".join(problems))
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a module's own loading hook refused a tensor
        raise CheckpointError(f"checkpoint {path} does not fit the model: {first_line(exc)}") from None
    problems = []
    if result.missing_keys:
        problems.append("missing keys: " + _few(list(result.missing_keys)))
    if result.unexpected_keys:
        problems.append("unexpected keys: " + _few(list(result.unexpected_keys)))
    if strict and problems:
        hint = _prefix_hint(list(result.missing_keys), list(result.unexpected_keys))
        raise CheckpointError(f"checkpoint {path} does not fit the model; " + "; ".join(problems) + hint)
    return model


def _tolerated_missing(state: dict[str, Any], own: dict[str, Any]) -> tuple[str, ...]:
    """The keys ``load_state_dict(strict=True)`` lets ``state`` lack: BatchNorm's ``num_batches_tracked`` when the
    checkpoint does not say its module was saved at version 2 or later (when the buffer appeared)."""
    metadata = getattr(state, "_metadata", None) or {}
    tolerated = []
    for key in own:
        module, _, name = key.rpartition(".")
        version = (metadata.get(module) or {}).get("version")
        if name == "num_batches_tracked" and key not in state and (version is None or version < 2):
            tolerated.append(key)
    return tuple(tolerated)


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """Say so when the checkpoint is the model's inner module (``self.model = inner`` saved as ``inner``)."""
    for prefix in _PREFIXES:
        inner = {k[len(prefix) :] for k in missing if k.startswith(prefix)}
        if missing and len(inner) == len(missing) and inner & set(unexpected):
            return (
                f" (the checkpoint's keys lack the model's {prefix!r} prefix: it holds the weights of the "
                f"inner module; load them into that module, or save the whole model)"
            )
    return ""


def mismatch_problems(
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    optional_suffixes: tuple[str, ...] = (),
    optional_keys: Iterable[str] = (),
) -> list[str]:
    """What keeps ``state`` from loading into a module whose state dict is ``own``.

    Args:
        state: the checkpoint's tensors.
        own: ``module.state_dict()``.
        strict: also report missing and unexpected keys (shape conflicts always count).
        optional_suffixes: keys ending so may be missing (e.g. ``num_batches_tracked``,
            absent from checkpoints saved before torch 0.4.1).
        optional_keys: keys that may be missing.

    Returns:
        One ``"label: key, key, ..."`` string per kind of problem; empty when it fits.
    """
    conflicts = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items() if _conflict(v, own.get(k))
    ]
    optional = set(optional_keys)
    missing = [k for k in own if k not in state and k not in optional and not k.endswith(optional_suffixes)]
    unexpected = [k for k in state if k not in own]
    problems = []
    if conflicts:
        problems.append("shape conflicts: " + _few(conflicts))
    if strict and missing:
        problems.append("missing keys: " + _few(missing))
    if strict and unexpected:
        problems.append("unexpected keys: " + _few(unexpected))
    return problems


def _conflict(tensor: Any, target: Any) -> bool:
    """A shape ``load_state_dict`` refuses: not a lazy parameter, nor a 1-element tensor for a 0-dim one."""
    import torch

    if target is None or torch.nn.parameter.is_lazy(target):
        return False
    if target.dim() == 0 and tensor.dim() == 1:  # torch loads a 1-dim tensor into a 0-dim one (0.3 checkpoints)
        return False
    return tuple(tensor.shape) != tuple(target.shape)


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
