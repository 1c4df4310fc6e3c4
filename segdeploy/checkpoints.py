"""Loading checkpoints safely: ``weights_only=True``, common wrappers, clear mismatches."""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
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


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``path`` without executing anything in it.

    The file is loaded with ``torch.load(weights_only=True)``: a pickle that
    would call arbitrary code is refused. Wrappers such as
    ``{"state_dict": ...}`` or ``{"model": ...}`` and ``module.`` prefixes are
    unwrapped.

    Raises:
        CheckpointError: missing, empty, corrupt or untrusted file, or no tensors in it.
    """
    import torch

    file = Path(path)
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
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"checkpoint {file} holds no tensors")
    for prefix in _PREFIXES:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def load_weights(model: nn.Module, path: str | os.PathLike[str], *, strict: bool = True) -> nn.Module:
    """Load the checkpoint at ``path`` into ``model`` and return the model.

    Raises:
        CheckpointError: unreadable file, or (with ``strict``) missing/unexpected
            keys or shape conflicts, each named in the message.
    """
    state = load_checkpoint(path)
    own = model.state_dict()
    problems = mismatch_problems(state, own, strict=strict)
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit the model; " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model


def mismatch_problems(
    state: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    optional_suffixes: tuple[str, ...] = (),
) -> list[str]:
    """What keeps ``state`` from loading into a module whose state dict is ``own``.

    Args:
        state: the checkpoint's tensors.
        own: ``module.state_dict()``.
        strict: also report missing and unexpected keys (shape conflicts always count).
        optional_suffixes: keys ending so may be missing (e.g. ``num_batches_tracked``,
            absent from checkpoints saved before torch 0.4.1).

    Returns:
        One ``"label: key, key, ..."`` string per kind of problem; empty when it fits.
    """
    conflicts = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state and not k.endswith(optional_suffixes)]
    unexpected = [k for k in state if k not in own]
    problems = []
    if conflicts:
        problems.append("shape conflicts: " + _few(conflicts))
    if strict and missing:
        problems.append("missing keys: " + _few(missing))
    if strict and unexpected:
        problems.append("unexpected keys: " + _few(unexpected))
    return problems


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" (and {len(items) - limit} more)" if len(items) > limit else "")
