"""The rows of ``segdeploy models``: parameters and FLOPs counted on the meta device."""

from __future__ import annotations

from typing import Any


def count_flops(model: Any, shape: tuple[int, int, int, int]) -> int:
    """FLOPs of one forward pass at ``shape`` (2 per multiply-add), counted without computing.

    The model must live on the meta device or the CPU; a meta input keeps the
    count instant even for FCN-8s at 512x512.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = torch.zeros(shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return int(counter.get_total_flops())


def builder_options(builder: Any) -> dict[str, Any]:
    """The options a zoo builder takes (``--config key=value``), with their defaults; classes and channels aside."""
    import inspect

    options = {}
    for name, param in inspect.signature(builder).parameters.items():
        if name in ("num_classes", "in_channels") or param.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        default = list(param.default) if isinstance(param.default, tuple) else param.default
        options[name] = default if isinstance(default, (bool, int, float, str, list, type(None))) else repr(default)
    return options


def summarize_models(pattern: str = "*", *, size: int = 512, num_classes: int = 21) -> list[dict[str, Any]]:
    """One dict per zoo model: name, paper, params, gflops at ``size``, rewrites."""
    import torch

    from segdeploy.models import create_model, list_models, model_info

    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes)
        rows.append(
            {
                "name": name,
                "paper": info.paper,
                "params": sum(p.numel() for p in model.parameters()),
                "gflops": count_flops(model, (1, 3, size, size)) / 1e9,
                "rewrites": list(info.rewrites),
                "min_size": info.min_size,
                "options": builder_options(info.builder),
            }
        )
    return rows
