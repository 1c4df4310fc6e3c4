"""A file meant for TensorRT holds only standard ONNX: the optimizer passes segdeploy runs never fuse into
ONNX Runtime contrib ops (``com.microsoft::Attention``, FusedConv, SkipLayerNormalization, BiasGelu, ...).

Every zoo export is checked for them in ``tests/test_export.py`` (the every-zoo-model test), the third-party
set model by model in ``tests/test_thirdparty.py`` (heavy tier).
"""

from __future__ import annotations

import functools

import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from torch import nn

from segdeploy import export_onnx
from segdeploy.export import translate
from segdeploy.export.translate import nonstandard_ops


class TokenAttention(nn.Module):
    """Patches -> one pre-norm self-attention block (the pattern onnxsim's attention fusion looks for) -> logits."""

    def __init__(self, dim: int = 16, heads: int = 2, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 4, stride=4)
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Conv2d(dim, num_classes, 1)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stem(x)
        n, c, h, w = features.shape
        tokens = features.flatten(2).transpose(1, 2)
        qkv = self.qkv(self.norm(tokens)).reshape(n, h * w, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w, c)
        tokens = tokens + self.proj(mixed)
        logits = self.head(tokens.transpose(1, 2).reshape(n, c, h, w))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _tiny_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3, "H", "W"])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _with_contrib_op(model: onnx.ModelProto) -> onnx.ModelProto:
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    del fused.graph.node[:]
    fused.graph.node.append(helper.make_node("FusedRelu", ["input"], ["logits"], domain="com.microsoft"))
    fused.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def test_onnxsim_runs_with_its_contrib_fusions_skipped(monkeypatch):
    onnxsim = pytest.importorskip("onnxsim")
    seen = {}
    real = onnxsim.simplify

    @functools.wraps(real)  # keeps the signature segdeploy reads to know which options this onnxsim has
    def spy(model, **kwargs):
        seen.update(kwargs)
        return real(model, **kwargs)

    monkeypatch.setattr(onnxsim, "simplify", spy)
    notes: list[str] = []
    simplified = translate.simplify(_tiny_model(), notes)
    assert nonstandard_ops(simplified) == [] and notes == []
    assert {"fuse_attention", "fuse_gqa"} <= set(seen.get("skipped_optimizers", ()))


@pytest.mark.parametrize("onnxsim_works", [True, False])
def test_an_optimizer_result_with_a_contrib_op_is_dropped_for_the_unsimplified_model(monkeypatch, onnxsim_works):
    # Whichever optimizer runs (onnxsim, or onnxscript's where onnxsim fails), a contrib op it adds is not written.
    onnxsim = pytest.importorskip("onnxsim")
    import onnxscript.optimizer

    def fusing_onnxsim(model, **kwargs):
        if not onnxsim_works:
            raise RuntimeError("onnxsim broke")
        return _with_contrib_op(model), True

    monkeypatch.setattr(onnxsim, "simplify", fusing_onnxsim)
    monkeypatch.setattr(onnxscript.optimizer, "optimize", lambda model: _with_contrib_op(model))
    original = _tiny_model()
    notes: list[str] = []
    result = translate.simplify(original, notes)
    assert result is original and nonstandard_ops(result) == []
    assert any("com.microsoft::FusedRelu" in note and "unsimplified" in note for note in notes), notes


def test_an_attention_model_exports_standard_onnx_only(tmp_path):
    path = tmp_path / "attention.onnx"
    export_onnx(TokenAttention().eval(), path, input_shape=(1, 3, 32, 40), verify=False)
    proto = onnx.load(str(path))
    assert nonstandard_ops(proto) == []
    assert {"MatMul", "Softmax"} <= {node.op_type for node in proto.graph.node}  # attention stays plain ops
