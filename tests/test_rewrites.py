"""Each graph rewrite, checked against the original program in PyTorch and in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.export import Dim

from segdeploy.errors import ExportError
from segdeploy.export.rewrites import REWRITE_NAMES, apply_rewrites

DYNAMIC = ({0: Dim.AUTO, 1: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},)  # channels too: one capture, many shapes
# (N, C, H, W): odd sides, sides not divisible by the bins or by 2, batch 1/2/3
SHAPES = [(1, 1, 7, 5), (2, 3, 9, 13), (3, 2, 37, 50), (1, 4, 64, 45), (2, 1, 6, 8), (1, 2, 11, 4)]
FORBIDDEN_OPS = {"MaxUnpool", "ScatterND", "ScatterElements", "ArgMax", "TopK"}


class FunctionalUnpool(nn.Module):
    """SegNet-style functional pooling with indices, a decoder step, unpooling to the input size."""

    def __init__(self, kernel: int = 2, relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.relu = kernel, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(x) if self.relu else x
        pooled, indices = F.max_pool2d(y, self.kernel, self.kernel, return_indices=True)
        decoded = pooled * 1.5 - 0.25  # decoder values differ from the pooled ones
        return F.max_unpool2d(decoded, indices, self.kernel, self.kernel, output_size=y.shape[-2:])


class ModuleUnpoolDefaultSize(nn.Module):
    """nn.MaxPool2d/nn.MaxUnpool2d without output_size (the call of the usual textbook SegNet)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled, indices = self.pool(x)
        return self.unpool(pooled + 1.0, indices)


class UnpoolAveragedValues(nn.Module):
    """Max-pool indices placing values that are not the max-pool's own.

    ONNX Runtime's MaxPool drops NaN (window [5, nan, 2, 1] pools to 5; PyTorch: nan), a
    difference of the runtime's pooling, not of the unpooling: averaged values keep NaN in
    both, so the window choices are what a comparison sees.
    """

    def __init__(self, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, indices = F.max_pool2d(x, self.kernel, self.kernel, return_indices=True)
        values = F.avg_pool2d(x, self.kernel, self.kernel) * 1.5 - 0.25
        return F.max_unpool2d(values, indices, self.kernel, self.kernel, output_size=x.shape[-2:])


class AdaptivePools(nn.Module):
    def __init__(self, avg_size: int | tuple[int, int] = 6, max_size: tuple[int, int] = (3, 4)) -> None:
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(avg_size)
        self.max_size = max_size

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        area = F.interpolate(x, size=(5, 3), mode="area")
        return self.avg(x), F.adaptive_max_pool2d(x, self.max_size), area, F.adaptive_avg_pool2d(x, 1)


def _rewritten(module: nn.Module, example: torch.Tensor) -> tuple[torch.fx.GraphModule, list[str]]:
    """Capture once, rewrite the program in place, and return it as a runnable module."""
    program = torch.export.export(module, (example,), dynamic_shapes=DYNAMIC)
    applied = apply_rewrites(program).applied
    return program.module(), applied


def _inputs(shape: tuple[int, ...], generator: torch.Generator) -> list[torch.Tensor]:
    """Random, negative, all-zero, constant, post-ReLU and few-valued (tie-heavy) inputs."""
    random = torch.randn(shape, generator=generator)
    few_values = torch.randint(-2, 3, shape, generator=generator).float()
    return [random, -random.abs(), torch.zeros(shape), torch.full(shape, 3.0), F.relu(random), few_values]


def test_rewrite_names_are_the_registry_vocabulary():
    assert REWRITE_NAMES == (
        "max_unpool",
        "adaptive_avg_pool",
        "adaptive_max_pool",
        "unfold_patches",
        "fold_patches",
        "antialias_resize",
    )


@pytest.mark.parametrize("relu", [True, False])
def test_max_unpool_rewrite_equals_pytorch_bit_for_bit_including_ties(relu):
    module = FunctionalUnpool(relu=relu)
    graph_module, applied = _rewritten(module, torch.randn(2, 3, 10, 12))
    assert applied == ["max_unpool"]
    generator = torch.Generator().manual_seed(1)
    for shape in SHAPES:
        for x in _inputs(shape, generator):
            assert torch.equal(graph_module(x), module(x)), shape


def test_max_unpool_rewrite_follows_pytorch_with_nan_and_inf():
    module = FunctionalUnpool(relu=False)
    graph_module, _ = _rewritten(module, torch.randn(2, 3, 10, 12))
    generator = torch.Generator().manual_seed(2)
    for shape in SHAPES[:4]:
        x = torch.randn(shape, generator=generator)
        x[torch.rand(shape, generator=generator) < 0.1] = float("nan")
        x[torch.rand(shape, generator=generator) < 0.1] = float("inf")
        x[torch.rand(shape, generator=generator) < 0.1] = float("-inf")
        torch.testing.assert_close(graph_module(x), module(x), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("kernel", [3, 4])
def test_max_unpool_rewrite_handles_larger_windows(kernel):
    module = FunctionalUnpool(kernel=kernel)
    graph_module, _ = _rewritten(module, torch.randn(2, 2, 13, 17))
    generator = torch.Generator().manual_seed(3)
    for shape in [(1, 2, 13, 17), (3, 1, 25, 9), (2, 2, 8, 12)]:
        for x in _inputs(shape, generator):
            assert torch.equal(graph_module(x), module(x)), shape


def test_max_unpool_rewrite_matches_default_output_size_layout():
    module = ModuleUnpoolDefaultSize()
    graph_module, applied = _rewritten(module, torch.randn(2, 3, 8, 10))
    assert applied == ["max_unpool"]
    generator = torch.Generator().manual_seed(4)
    for shape in [(1, 3, 8, 10), (2, 1, 16, 6), (3, 2, 4, 4)]:
        for x in _inputs(shape, generator):
            assert torch.equal(graph_module(x), module(x)), shape


def test_max_unpool_rewrite_refuses_overlapping_windows():
    class Overlapping(nn.Module):
        def forward(self, x):
            pooled, indices = F.max_pool2d(x, 3, 2, return_indices=True)
            return F.max_unpool2d(pooled, indices, 3, 2, output_size=x.shape[-2:])

    program = torch.export.export(Overlapping(), (torch.randn(2, 1, 9, 9),))
    with pytest.raises(ExportError, match=r"unsupported max_pool2d config \(kernel=\[3, 3\], stride=\[2, 2\]"):
        apply_rewrites(program)


def test_adaptive_pool_rewrites_match_pytorch_at_every_size():
    module = AdaptivePools()
    graph_module, applied = _rewritten(module, torch.randn(2, 3, 36, 48))
    assert applied == ["adaptive_avg_pool", "adaptive_max_pool"]
    generator = torch.Generator().manual_seed(5)
    for shape in SHAPES + [(2, 3, 72, 96), (1, 1, 6, 4)]:
        for x in _inputs(shape, generator):
            for got, expected in zip(graph_module(x), module(x)):
                assert got.shape == expected.shape
                scale = expected.abs().max().clamp_min(1.0)
                assert ((got - expected).abs().max() / scale) <= 1e-6, shape


def test_adaptive_max_pool_rewrite_refuses_used_indices():
    class WithIndices(nn.Module):
        def forward(self, x):
            values, indices = F.adaptive_max_pool2d(x, 3, return_indices=True)
            return values + indices.float()

    program = torch.export.export(WithIndices(), (torch.randn(2, 1, 9, 9),))
    with pytest.raises(ExportError, match="indices of adaptive_max_pool2d"):
        apply_rewrites(program)


def test_rewritten_onnx_has_only_tensorrt_ops_and_is_exact_at_other_sizes(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")

    class Everything(nn.Module):
        def forward(self, x):
            unpooled = FunctionalUnpool()(x)
            avg, mx, area, mean = AdaptivePools()(x)
            return unpooled, avg, mx, area, mean

    module = Everything()
    example = torch.randn(2, 3, 36, 48)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    assert apply_rewrites(program).applied == ["max_unpool", "adaptive_avg_pool", "adaptive_max_pool"]
    path = tmp_path / "rewritten.onnx"
    # the edited program itself is translated (torch does not trace the model a second time), with
    # segdeploy's translations of the ops the rewrites insert
    from segdeploy.export.onnx_ops import TRANSLATIONS

    torch.onnx.export(
        program, (example,), str(path), dynamo=True, external_data=False, verbose=False,
        custom_translation_table=TRANSLATIONS,
    )  # fmt: skip
    proto = onnx.load(str(path))
    op_types = {node.op_type for node in proto.graph.node}
    assert not op_types & FORBIDDEN_OPS
    assert all(len([o for o in n.output if o]) == 1 for n in proto.graph.node if n.op_type == "MaxPool")
    assert "AveragePool" not in op_types  # adaptive pooling is not baked into a fixed kernel
    session = ort.InferenceSession(str(path))
    generator = torch.Generator().manual_seed(6)
    for shape in [(1, 3, 37, 50), (3, 3, 64, 45), (2, 3, 7, 9)]:
        for x in _inputs(shape, generator)[:3]:
            got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            for g, expected in zip(got, module(x)):
                np.testing.assert_allclose(g, expected.numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("kernel", "dynamic"), [(2, True), (3, True), (2, False)])
def test_unpool_onnx_translation_equals_pytorch_bit_for_bit_with_ties_nan_and_inf(tmp_path, kernel, dynamic):
    # The unpooling is one op in the rewritten program, written to ONNX by its own translation:
    # that translation, not only the PyTorch replacement, must follow max_unpool2d exactly.
    ort = pytest.importorskip("onnxruntime")
    from segdeploy.export.onnx_ops import TRANSLATIONS

    module = UnpoolAveragedValues(kernel)
    example = torch.randn(2, 2, 13, 17)
    program = torch.export.export(module, (example,), dynamic_shapes=DYNAMIC if dynamic else None)
    apply_rewrites(program)
    path = tmp_path / "unpool.onnx"
    torch.onnx.export(
        program, (example,), str(path), dynamo=True, external_data=False, verbose=False,
        custom_translation_table=TRANSLATIONS,
    )  # fmt: skip
    session = ort.InferenceSession(str(path))
    generator = torch.Generator().manual_seed(7)
    shapes = [(1, 3, 7, 5), (3, 2, 25, 9), (2, 1, 12, 12)] if dynamic else [tuple(example.shape)]
    for shape in shapes:
        special = torch.randn(shape, generator=generator)
        for value, share in ((float("nan"), 0.1), (float("inf"), 0.1), (float("-inf"), 0.1)):
            special[torch.rand(shape, generator=generator) < share] = value
        for x in [*_inputs(shape, generator), special]:
            (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
            torch.testing.assert_close(torch.from_numpy(got), module(x), rtol=0, atol=0, equal_nan=True)


def test_unpool_inputs_are_recorded_in_the_order_the_model_unpools():
    class TwoStage(nn.Module):
        def forward(self, x):
            y1 = F.relu(x)
            p1, i1 = F.max_pool2d(y1, 2, 2, return_indices=True)
            y2 = torch.sigmoid(p1)
            p2, i2 = F.max_pool2d(y2, 3, 3, return_indices=True)
            u2 = F.max_unpool2d(p2 * 2, i2, 3, 3, output_size=y2.shape[-2:])
            return F.max_unpool2d(u2 + 1, i1, 2, 2, output_size=y1.shape[-2:])

    program = torch.export.export(TwoStage(), (torch.randn(2, 2, 12, 18),), dynamic_shapes=DYNAMIC)
    found = apply_rewrites(program)
    # decoder order: the deepest pooling (window 3, fed by the sigmoid) is unpooled first
    assert [k for _, k in found.unpool_inputs] == [3, 2]
    names = {node.name: node for node in program.graph.nodes}
    assert names[found.unpool_inputs[0][0]].target is torch.ops.aten.sigmoid.default
    assert names[found.unpool_inputs[1][0]].target is torch.ops.aten.relu.default


class PatchMixer(nn.Module):
    """MobileViTV2's pattern: unfold into 2x2 patches, mix each patch's pixels, fold back to the input's size."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        self.mix = nn.Linear(4, 4)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        patches = F.unfold(x, kernel_size=(2, 2), stride=(2, 2)).reshape(n, c, 4, -1)
        mixed = self.mix(patches.transpose(2, 3)).transpose(2, 3).reshape(n, c * 4, -1)
        return F.fold(mixed, output_size=x.shape[-2:], kernel_size=(2, 2), stride=(2, 2))


class InterpolatedEmbedding(nn.Module):
    """timm's pattern: a position embedding on a fixed grid, resized with antialias to the input's patch grid."""

    def __init__(self, mode: str, align_corners: bool = False) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(1, 3, 6, 5))
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = (x.shape[-2] // 4, x.shape[-1] // 4)  # 16x20 traced: upsampling; below 24x20 it downsamples
        kwargs = {"mode": self.mode, "antialias": True, "align_corners": self.align_corners}
        embedding = F.interpolate(self.embedding, size=grid, **kwargs)
        corner = F.interpolate(x, size=(5, 3), **kwargs)[..., :1, :1]
        shrunk = F.interpolate(x, scale_factor=0.37, **kwargs)  # no size in the graph: it follows from the factor
        return F.avg_pool2d(x, 4) + embedding + corner + shrunk[..., :1, :1]


def test_non_overlapping_fold_and_unfold_rewrites_are_bit_exact_at_odd_sizes():
    module = PatchMixer()
    program = torch.export.export(module, (torch.randn(2, 3, 10, 12),), dynamic_shapes=DYNAMIC)
    shape_env = next(n.meta["val"] for n in program.graph.nodes if n.op == "placeholder").fake_mode.shape_env
    known = len(shape_env.guards)
    assert apply_rewrites(program).applied == ["unfold_patches", "fold_patches"]
    # no assumption about the sizes beyond "not 0": traced at even sides, the file stays right at odd ones
    assert all(str(guard.expr).startswith("Ne(") for guard in shape_env.guards[known:])
    graph_module = program.module()
    assert not {"im2col", "col2im"} & {n.target.__name__.split(".")[0] for n in graph_module.graph.nodes
                                        if n.op == "call_function" and hasattr(n.target, "__name__")}  # fmt: skip
    generator = torch.Generator().manual_seed(8)
    # odd sides: the last row/column no window reaches is dropped by unfold and zero after fold
    for shape in [(1, 3, 7, 5), (2, 3, 9, 13), (3, 3, 4, 4), (1, 3, 64, 45)]:
        for x in _inputs(shape, generator)[:3]:
            assert torch.equal(graph_module(x), module(x)), shape


def test_overlapping_unfold_is_left_to_the_translation():
    class Overlapping(nn.Module):
        def forward(self, x):
            return F.unfold(x, kernel_size=3, stride=1, padding=1)

    program = torch.export.export(Overlapping(), (torch.randn(2, 1, 9, 9),))
    assert apply_rewrites(program).applied == []


@pytest.mark.parametrize(("mode", "align_corners"), [("bicubic", False), ("bilinear", False), ("bicubic", True)])
def test_antialias_resize_rewrite_matches_pytorch_when_upsampling_and_downsampling(mode, align_corners):
    # Upsampling is not plain interpolation either: antialiased bicubic uses a = -0.5 and renormalizes at the borders.
    module = InterpolatedEmbedding(mode, align_corners)
    graph_module, applied = _rewritten(module, torch.randn(2, 3, 64, 80))
    assert applied == ["antialias_resize"]
    generator = torch.Generator().manual_seed(9)
    for shape in [(1, 3, 8, 8), (2, 3, 17, 23), (1, 3, 24, 20), (1, 3, 100, 36), (3, 3, 64, 80)]:
        x = torch.randn(shape, generator=generator)
        got, expected = graph_module(x), module(x)
        assert got.shape == expected.shape
        assert ((got - expected).abs().max() / expected.abs().max()) <= 2e-6, shape


def test_patch_and_antialias_rewrites_export_to_opset_17_without_col2im_or_antialiased_resize(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from segdeploy.export.translate import to_opset

    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.patches, self.embedding = PatchMixer(), InterpolatedEmbedding("bicubic")

        def forward(self, x):
            return self.embedding(self.patches(x))

    module = Both().eval()
    example = torch.randn(2, 3, 64, 80)
    program = torch.export.export(module, (example,), dynamic_shapes=({0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO},))
    assert apply_rewrites(program).applied == ["unfold_patches", "fold_patches", "antialias_resize"]
    path = tmp_path / "patches.onnx"
    torch.onnx.export(program, (example,), str(path), dynamo=True, external_data=False, verbose=False)
    proto = to_opset(onnx.load(str(path)), 17)
    onnx.checker.check_model(proto, full_check=True)
    assert not {"Col2Im", "Resize"} & {node.op_type for node in proto.graph.node}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(10)
    for shape in [(1, 3, 13, 9), (2, 3, 24, 20), (1, 3, 160, 96)]:
        x = torch.randn(shape, generator=generator)
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            expected = module(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * float(np.abs(expected).max()))
