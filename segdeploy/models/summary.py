"""The rows of ``segdeploy models``: parameters and FLOPs counted on the meta device, kept in the cache.

Counting builds every full-size model and traces one forward pass (seconds); the rows depend only on
the zoo's code, torch's version, the input size and the class count, so they are kept in
``<cache>/models/`` under a key of exactly those, and a later listing reads them without importing torch.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from segdeploy.fileio import cache_root, write_text_atomic


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


def summarize_models(
    pattern: str = "*", *, size: int = 512, num_classes: int = 21, cache_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """One dict per zoo model matching ``pattern``: name, paper, params, gflops at ``size``, rewrites, options.

    Args:
        pattern: shell-style filter on names.
        size: input side the FLOPs are counted at.
        num_classes: classes of the counted models.
        cache_dir: where the rows are kept (default ``segdeploy.fileio.cache_root()``).
    """
    path = cache_root(cache_dir) / "models" / f"zoo-{_rows_key(size, num_classes)}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        names, rows = list(cached["names"]), dict(cached["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        names, rows = [], {}
    wanted = [name for name in names if fnmatch.fnmatch(name, pattern)]
    if not names or any(name not in rows for name in wanted):
        from segdeploy.models import list_models

        names = list_models()
        wanted = [name for name in names if fnmatch.fnmatch(name, pattern)]
        missing = [name for name in wanted if name not in rows]
        rows.update({name: _row(name, size, num_classes) for name in missing})
        if missing:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_text_atomic(path, json.dumps({"names": names, "rows": rows}, indent=1) + "\n")
            except OSError:
                pass  # a read-only home: the listing works, the next one counts again
    return [rows[name] for name in wanted]


def _row(name: str, size: int, num_classes: int) -> dict[str, Any]:
    import torch

    from segdeploy.models import create_model, model_info

    info = model_info(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    return {
        "name": name,
        "paper": info.paper,
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": count_flops(model, (1, 3, size, size)) / 1e9,
        "rewrites": list(info.rewrites),
        "min_size": info.min_size,
        "options": info.options(),
    }


def _rows_key(size: int, num_classes: int) -> str:
    """A digest of what the rows depend on: the zoo's sources, torch's version, the size and the classes."""
    digest = hashlib.sha256(f"{size}\0{num_classes}\0".encode())
    try:
        digest.update(metadata.version("torch").encode())
    except metadata.PackageNotFoundError:
        digest.update(b"no torch")
    package = Path(__file__).resolve().parent
    for source in sorted(package.rglob("*.py")):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
