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


class _StemHead(nn.Module):
    """A conv-BN-ReLU stem and a 1x1 head; subclasses put their size-dependent part between them."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)


class GlobalContext(_StemHead):
    """A global-context branch pooled by 32: at a 32x32 trace it is 1x1, and torch records contiguity
    guards on that size-1 map (``Eq(w//32, 1)``) that change nothing the graph computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        context = F.max_pool2d(f, 32)
        context = context.flatten(2).transpose(1, 2).reshape(context.shape)
        return self.head(f + F.interpolate(context, size=f.shape[-2:], mode="nearest"))


class SmoothingPasses(_StemHead):
    """One more smoothing pass per 64 columns, counted with a Python int: the capture bakes the count."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)
        passes = int(x.shape[-1] // 64) + 1
        for _ in range(passes):
            f = F.avg_pool2d(f, 3, 1, 1)
        return self.head(f)


class WindowPad(nn.Module):
    """Swin's pattern: pad the patch grid to a window multiple only when needed, mix within windows, crop."""

    def __init__(self, num_classes: int = 3, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.embed = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.BatchNorm2d(8))
        self.mix = nn.Linear(8 * window * window, 8 * window * window)
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x)
        n, c, h, w = f.shape
        ws = self.window
        pad_h, pad_w = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_h > 0 or pad_w > 0:
            f = F.pad(f, (0, pad_w, 0, pad_h))
        rows, cols = f.shape[2] // ws, f.shape[3] // ws
        windows = f.reshape(n, c, rows, ws, cols, ws).permute(0, 2, 4, 1, 3, 5).reshape(n, rows, cols, c * ws * ws)
        windows = self.mix(windows).reshape(n, rows, cols, c, ws, ws).permute(0, 3, 1, 4, 2, 5)
        f = windows.reshape(n, c, rows * ws, cols * ws)[:, :, :h, :w]
        return F.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear", align_corners=False)


def _matches_pytorch(model, path, shapes):
    """Each shape runs in ONNX Runtime and matches PyTorch within 1e-4 of the output's scale."""
    proto = onnx.load(path)
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = run_onnx(proto, x.numpy())
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max(), shape


def _claimed(rule, trace):
    """Sizes the rule admits, spread over it: its ends, above the trace, non-square both ways, batch 2."""
    m, low = rule.multiple, -(-rule.min_size // rule.multiple) * rule.multiple
    high = rule.max_size // m * m if rule.max_size is not None else 2 * trace[2] // m * m
    mid = min(max(trace[2] * 3 // 2 // m * m, low), high)
    return [(2, 3, low, high), (1, 3, high, low), (1, 3, high, high), (2, 3, mid, low)]


def _run_sides(result):
    return {side for r in result.verification.results for side in r.shape[2:]}


def test_a_harmless_guard_of_the_capture_does_not_narrow_a_correct_file(tmp_path):
    from segdeploy.export.capture import capture
    from segdeploy.export.guards import CaptureGuards

    model = calibrate_batchnorm(GlobalContext(), (2, 3, 64, 64))
    axes = {0: "batch", 2: "height", 3: "width"}
    guards = CaptureGuards.from_program(capture(model, torch.randn(2, 3, 32, 32), axes), axes)
    assert guards.failing((1, 3, 64, 32))  # the capture did assume the traced size there
    path = tmp_path / "context.onnx"
    result = segdeploy.export_onnx(model, path, input_shape=(1, 3, 32, 32), opset=17)
    assert result.verification.passed and not result.size_rule.narrowed
    assert result.metadata.describe_sizes() == "accepts any height and width, at least 32"
    assert 64 in _run_sides(result) and max(_run_sides(result)) >= 64  # the runs looked where the guard fails
    _matches_pytorch(model, path, [(1, 3, 128, 96), (2, 3, 64, 160), (1, 3, 256, 256)])


def test_a_size_baked_above_the_trace_narrows_the_rule_to_proven_sizes_naming_the_line(tmp_path):
    model = calibrate_batchnorm(SmoothingPasses(), (2, 3, 48, 48))
    path = tmp_path / "passes.onnx"
    result = segdeploy.export_onnx(model, path, input_shape=(1, 3, 48, 48), opset=17)
    rule = result.size_rule
    assert result.verification.passed and rule.fixed is None
    assert rule.max_size == 63 and rule.valid(48) and not rule.valid(64)
    assert "test_sizes.py" in rule.narrowed and "Eq(" in rule.narrowed  # the model's own line and its guard
    assert result.metadata.max_size == 63 and any("sizes narrowed" in note for note in result.warnings)
    assert {rule.min_size, rule.max_size} <= _run_sides(result)  # both ends of the claim were run
    _matches_pytorch(model, path, _claimed(rule, (1, 3, 48, 48)))
    with pytest.raises(AssertionError):  # where the file would be wrong, it is
        _matches_pytorch(model, path, [(1, 3, 48, 64)])


def test_without_verification_a_guard_inside_the_rule_is_a_note_not_a_narrowing(tmp_path):
    model = calibrate_batchnorm(SmoothingPasses(), (2, 3, 48, 48))
    result = segdeploy.export_onnx(model, tmp_path / "passes.onnx", input_shape=(1, 3, 48, 48), verify=False)
    assert result.verification is None and not result.size_rule.narrowed and result.metadata.max_size is None
    notes = [note for note in result.warnings if note.startswith("sizes not proven")]
    assert len(notes) == 1 and "test_sizes.py" in notes[0] and "1x3x" in notes[0]


def test_a_window_padding_model_is_narrowed_to_the_window_multiple_its_runs_prove(tmp_path):
    model = calibrate_batchnorm(WindowPad(), (2, 3, 64, 64))
    path = tmp_path / "windows.onnx"
    result = segdeploy.export_onnx(model, path, input_shape=(1, 3, 64, 64), opset=17)
    rule = result.size_rule
    assert result.verification.passed and rule.fixed is None and rule.max_size is None
    assert rule.multiple == 16 and "test_sizes.py" in rule.narrowed
    assert result.metadata.size_multiple == 16 and result.metadata.min_size == rule.min_size
    assert max(_run_sides(result)) >= 128  # proven well above the trace
    _matches_pytorch(model, path, [*_claimed(rule, (1, 3, 64, 64)), (1, 3, 80, 96)])
    assert not rule.valid(72) and _sizes_that_run(path, [(1, 3, 72, 64)]) == []  # padding needed: the file cannot


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


def test_proof_shapes_put_each_side_well_above_the_trace_and_the_other_at_the_minimum():
    shapes = proof_shapes((1, 3, 256, 256), min_size=32, size_multiple=32)
    assert (1, 3, 512, 32) in shapes  # 2x tall, minimum width
    assert (1, 3, 32, 384) in shapes  # 1.5x wide, minimum height
    assert all(h % 32 == 0 and w % 32 == 0 for _, _, h, w in shapes)
    odd = proof_shapes((1, 3, 64, 64), min_size=5)
    assert odd == [(1, 3, 129, 5), (1, 3, 5, 97)]  # odd long sides when any size goes
    bounded = proof_shapes((1, 3, 120, 120), min_size=100, max_size=128)
    assert all(100 <= s <= 128 for _, _, h, w in bounded for s in (h, w))


def test_the_plan_judges_float64_away_from_the_trace_and_probes_cost_a_fraction_of_a_traced_forward():
    exact, probes = verification_plan((1, 3, 512, 512), min_size=32, size_multiple=32)
    assert (1, 3, 512, 512) not in exact + probes  # the one size the capture cannot get wrong
    assert any(n == 2 for n, *_ in exact) and len(exact) == 2
    assert max(h for _, _, h, _ in probes) >= 1024 and max(w for *_, w in probes) >= 768
    assert {32} <= {min(h, w) for _, _, h, w in probes}  # the minimum, on both sides
    traced_area = 512 * 512
    assert sum(n * h * w for n, _, h, w in exact) <= 0.6 * traced_area
    assert sum(n * h * w for n, _, h, w in probes) <= 0.25 * traced_area
    fixed, batch = verification_plan((1, 3, 64, 48), dynamic=("batch",))
    assert fixed == [(1, 3, 64, 48)] and batch == [(2, 3, 64, 48)]


def test_failing_runs_narrow_to_a_maximum_a_minimum_or_the_traced_size():
    from segdeploy.criteria import ShapeComparison

    rule = SizeRule(32, 32, 4)
    ok = ShapeComparison((1, 3, 256, 256), (), "noise-floor")
    above = ShapeComparison((1, 3, 1024, 64), (), "float32-probe", passed=False, failed=["runs out"])
    narrowed = narrowed_rule(rule, (1, 3, 256, 256), [ok, above])
    assert narrowed.max_size == 992 and narrowed.min_size == 32 and "1x3x1024x64" in narrowed.narrowed
    below = ShapeComparison((2, 3, 32, 64), (), "float32-probe", passed=False, failed=["runs out"])
    raised = narrowed_rule(rule, (1, 3, 256, 256), [ok, above, below])
    assert (raised.min_size, raised.max_size) == (64, 992) and not raised.valid(32)
    # failures on both sides of the trace, close to it: nothing but the traced size is left
    tall = ShapeComparison((1, 3, 288, 256), (), "float32-probe", passed=False, failed=["runs out"])
    small = ShapeComparison((1, 3, 224, 224), (), "float32-probe", passed=False, failed=["runs out"])
    fixed = narrowed_rule(rule, (1, 3, 256, 256), [ok, tall, small])
    assert fixed.fixed == (256, 256) and not fixed.valid(224)
    # a shape that failed under an earlier, wider rule stays excluded
    again = narrowed_rule(rule, (1, 3, 256, 256), [ok, above], failed=[(2, 3, 32, 64)])
    assert (again.min_size, again.max_size) == (64, 992)
    assert narrowed_rule(rule, (1, 3, 256, 256), [ok]) is rule


def test_an_output_without_signal_does_not_narrow_the_rule():
    from segdeploy.criteria import NO_SIGNAL, ShapeComparison

    rule = SizeRule(1, 8, 4)
    flat = ShapeComparison((1, 3, 33, 35), (), NO_SIGNAL, passed=False, failed=["cannot judge: constant output"])
    assert narrowed_rule(rule, (1, 3, 64, 64), [flat]) is rule


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


def test_a_file_narrowed_to_its_traced_size_says_fixed_and_refuses_other_sizes():
    from segdeploy.artifact import Metadata
    from segdeploy.errors import UserInputError

    meta = Metadata(trace_shape=(1, 3, 128, 96), dynamic_axes=("batch",), min_size=36)
    assert meta.describe_sizes() == "fixed height x width 128x96, any batch"
    meta.check_size((2, 3, 128, 96))
    with pytest.raises(UserInputError, match="fixed height x width 128x96"):
        meta.check_size((1, 3, 96, 96))


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


def test_the_reference_threads_fit_the_idle_cpus_and_are_restored(monkeypatch):
    from segdeploy import threads

    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.2, 2.0, 2.0))  # another process keeps a CPU busy
    assert threads.idle_cpus() == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.4, 0.5, 0.5))  # only this process
    assert threads.idle_cpus() == 2
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert threads.idle_cpus() == 1
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.2, 2.0, 2.0))
    before = torch.get_num_threads()
    with threads.fitted_threads() as used:
        assert used == min(before, 1) and torch.get_num_threads() == used
    assert torch.get_num_threads() == before
