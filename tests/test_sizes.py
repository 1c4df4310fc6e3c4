"""Every size a file promises is proven by runs of the written file, or the promise is narrowed to what was.

Small hand-written models reproduce what transformer-era models do to sizes: MobileViT rounds the
feature map up to a patch multiple with Python ints (``int(math.ceil(h / p) * p)``), interpolates when
that changes the size and unfolds patches by reshape, so its capture bakes sizes from the trace.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from helpers import calibrate_batchnorm, run_onnx
from torch import nn

import segdeploy
from segdeploy.export.capture import SizeRule
from segdeploy.proof import narrowed_rule, proof_shapes
from segdeploy.verify import verification_plan


class PatchUnfold(nn.Module):
    """MobileViT's pattern: round up to a patch multiple, interpolate when needed, unfold by reshape."""

    def __init__(self, num_classes: int = 3, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mix = nn.Linear(8, 8)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        b, c, h, w = f.shape
        p = self.patch
        new_h, new_w = int(math.ceil(h / p) * p), int(math.ceil(w / p) * p)
        if new_h != h or new_w != w:
            f = F.interpolate(f, size=(new_h, new_w), mode="bilinear", align_corners=False)
        nh, nw = new_h // p, new_w // p
        patches = f.reshape(b * c * nh, p, nw, p).transpose(1, 2).reshape(b, c, nh * nw, p * p)
        patches = self.mix(patches.transpose(1, 3)).transpose(1, 3)
        f = patches.reshape(b * c * nh, nw, p, p).transpose(1, 2).reshape(b, c, new_h, new_w)
        if new_h != h or new_w != w:
            f = F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
        return F.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


class TokenView(nn.Module):
    """BEiT's pattern: tokens plus a class token, attention heads split and merged by view/reshape."""

    def __init__(self, num_classes: int = 3, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Conv2d(3, dim, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.head = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        n, d, h, w = f.shape
        tokens = torch.cat([self.cls.expand(n, -1, -1), f.flatten(2).transpose(1, 2)], dim=1)
        q, k, v = self.qkv(tokens).view(n, h * w + 1, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, h * w + 1, d)
        grid = out[:, 1:].transpose(1, 2).reshape(n, d, h, w)
        return F.interpolate(self.head(grid), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _sizes_that_run(path, shapes):
    model = onnx.load(path)
    ok = []
    for shape in shapes:
        try:
            run_onnx(model, np.random.default_rng(0).standard_normal(shape).astype(np.float32))
            ok.append(shape)
        except Exception:
            pass
    return ok


def test_a_patch_unfolding_model_is_narrowed_to_the_sizes_its_file_runs_and_names_the_line(tmp_path):
    model = calibrate_batchnorm(PatchUnfold(), (2, 3, 64, 64))
    path = tmp_path / "unfold.onnx"
    result = segdeploy.export_onnx(model, path, input_shape=(1, 3, 64, 64), opset=17)
    rule, meta = result.size_rule, result.metadata
    assert rule.narrowed and "test_sizes.py" in rule.narrowed  # the model's own line that specialized
    assert meta.max_size is not None or rule.fixed is not None
    assert any("sizes narrowed" in note for note in result.warnings)
    assert result.verification.passed
    # every size the narrowed rule admits runs in ONNX Runtime and matches PyTorch
    sides = range(rule.min_size, (meta.max_size or 64) + 1) if rule.fixed is None else [64]
    for h, w in [(min(sides), max(sides)), (max(sides), min(sides)), (max(sides), max(sides))]:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_onnx(onnx.load(path), x.numpy())
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()
    # and the file refuses (or is not promised) the sizes where it would be wrong
    assert not rule.valid(96) and not rule.valid(128)


def test_a_view_of_a_symbolic_token_count_exports_with_dynamic_size(tmp_path):
    model = TokenView().eval()
    path = tmp_path / "tokens.onnx"
    result = segdeploy.export_onnx(model, path, input_shape=(1, 3, 64, 64), opset=17)
    assert result.verification.passed and not result.size_rule.narrowed
    assert result.metadata.max_size is None and result.size_rule.fixed is None
    shapes = [(1, 3, 128, 40), (2, 3, 48, 136), (1, 3, 8, 8)]
    assert _sizes_that_run(path, shapes) == shapes


def test_proof_shapes_spread_over_the_rule_above_below_non_square_and_batch_2():
    shapes = proof_shapes((1, 3, 256, 256), min_size=32, size_multiple=32)
    assert shapes[0] == (1, 3, 256, 256)
    assert (2, 3, 32, 64) in shapes  # the minimum, batch 2
    assert any(h >= 512 and w < h for _, _, h, w in shapes)  # about 2x tall
    assert any(w >= 384 and h < w for _, _, h, w in shapes)  # about 1.5x wide
    assert all(h % 32 == 0 and w % 32 == 0 for _, _, h, w in shapes)
    odd = proof_shapes((1, 3, 64, 64), min_size=5)
    assert any(h % 2 for _, _, h, _ in odd) and any(w % 2 for *_, w in odd)
    bounded = proof_shapes((1, 3, 120, 120), min_size=100, max_size=128)
    assert all(100 <= s <= 128 for _, _, h, w in bounded for s in (h, w))


def test_the_float64_judgement_runs_away_from_the_trace_and_the_trace_is_a_probe():
    exact, probes = verification_plan((1, 3, 512, 512), min_size=32, size_multiple=32)
    assert (1, 3, 512, 512) not in exact and (1, 3, 512, 512) in probes
    assert any(n == 2 for n, *_ in exact) and len(exact) == 2
    traced_area = 512 * 512
    assert sum(n * h * w for n, _, h, w in exact) <= 0.6 * traced_area
    assert sum(n * h * w for n, _, h, w in probes) <= 1.6 * traced_area
    fixed, batch = verification_plan((1, 3, 64, 48), dynamic=("batch",))
    assert fixed == [(1, 3, 64, 48)] and batch == [(2, 3, 64, 48)]


def test_a_failing_probe_narrows_to_a_maximum_or_to_the_traced_size():
    from segdeploy.criteria import ShapeComparison

    rule = SizeRule(32, 32, 4)
    ok = ShapeComparison((1, 3, 256, 256), (), "noise-floor")
    above = ShapeComparison((1, 3, 1024, 64), (), "float32-probe", passed=False, failed=["runs out"])
    narrowed = narrowed_rule(rule, (1, 3, 256, 256), [ok, above])
    assert narrowed.max_size == 992 and "1x3x1024x64" in narrowed.narrowed
    below = ShapeComparison((2, 3, 32, 64), (), "float32-probe", passed=False, failed=["runs out"])
    fixed = narrowed_rule(rule, (1, 3, 256, 256), [ok, above, below])
    assert fixed.fixed == (256, 256) and not fixed.valid(224)
    assert narrowed_rule(rule, (1, 3, 256, 256), [ok]) is rule


@pytest.mark.parametrize("kind", ["logits", "classmap"])
def test_a_file_fixed_to_its_traced_size_refuses_other_sizes_at_its_input(tmp_path, kind):
    from segdeploy.export import translate

    model = PatchUnfold().eval()
    path = tmp_path / "fixed.onnx"
    result = segdeploy.export_onnx(
        model, path, input_shape=(1, 3, 64, 64), opset=17, verify=False, io=segdeploy.IOFormat(output_kind=kind)
    )
    proto = onnx.load(path)
    translate.fix_spatial_dims(proto, (64, 64), result.metadata.preprocessing.input_format)
    dims = [d.dim_value or d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2:] == [64, 64] and dims[0] == "batch"
    onnx.checker.check_model(proto, full_check=True)


def test_the_lint_reports_a_size_baked_from_the_trace_and_not_a_correct_file(tmp_path):
    from segdeploy.export.lint import lint_onnx

    baked = tmp_path / "baked.onnx"
    segdeploy.export_onnx(PatchUnfold().eval(), baked, input_shape=(1, 3, 64, 64), opset=17, verify=False)
    proto = onnx.load(baked)
    found = [i for i in lint_onnx(proto).issues if i.rule == "baked-size"]
    assert found and all(i.severity == "warning" for i in found)
    assert any("= height/4" in i.message or "= width/4" in i.message for i in found)  # the 16x16 feature map
    clean = tmp_path / "tokens.onnx"
    segdeploy.export_onnx(TokenView().eval(), clean, input_shape=(1, 3, 64, 64), opset=17, verify=False)
    assert not [i for i in lint_onnx(clean).issues if i.rule == "baked-size"]
