"""Layout fixes a captured program needs before torch's exporter translates it.

They change no value: each makes explicit what an op does anyway, where the exporter's own passes
would otherwise fail on symbolic sizes.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import fx

if TYPE_CHECKING:
    from torch.export import ExportedProgram

aten = torch.ops.aten


def contiguous_reshapes(program: ExportedProgram) -> int:
    """Make every reshape of a tensor that is not provably contiguous read an explicit contiguous copy.

    ``x.transpose(1, 2).reshape(n, t, -1)`` (attention merging its heads) is captured as one
    ``reshape``. torch's ONNX exporter decomposes it with sizes assumed to be neither 0 nor 1, decides
    the strided input is viewable, and then fails re-checking that view on symbolic strides ("Cannot
    view a tensor with shape [N, (H/16)*(W/16)+1, heads, d]"). A ``clone`` in contiguous format before
    it (what ``reshape`` does anyway for such input) keeps the view provable; it exports as nothing.

    Returns:
        How many copies were inserted.
    """
    from segdeploy.export.torch_compat import detect_fake_mode, is_contiguous_or_false

    graph = program.graph_module.graph
    inserted = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.reshape.default, aten.view.default):
            continue
        source = node.args[0]
        value = source.meta.get("val") if isinstance(source, fx.Node) else None
        if not isinstance(value, torch.Tensor) or is_contiguous_or_false(value):
            continue
        with graph.inserting_before(node):
            copy = graph.call_function(aten.clone.default, (source,), {"memory_format": torch.contiguous_format})
        with detect_fake_mode([value]) or contextlib.nullcontext():
            copy.meta = {**node.meta, "val": aten.clone.default(value, memory_format=torch.contiguous_format)}
        node.replace_input_with(source, copy)
        inserted += 1
    if inserted:
        graph.lint()
        program.graph_module.recompile()
    return inserted
