"""FP16 ONNX conversion and the shapes dataset it is judged on.

FP16 is judged on briefly trained models (random weights sit on near-ties, see
docs/verification.md). The two test networks are exported with ``torch.onnx.export``
directly; the SegNet-style one calls the export rewrites' plain-PyTorch
functions (window-slot unpooling, pooling-matrix adaptive pooling) in its
forward, so its ONNX has the graph segdeploy's export pipeline writes without
depending on that pipeline. Inputs at 37x53 and batch 3 differ from the traced
2x3x32x32.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from helpers import TinySegNet, export_stock_onnx, run_onnx
from torch import nn

import segdeploy
from segdeploy.criteria import compare, mean_iou, thresholds_for
from segdeploy.data import SHAPE_KINDS, evaluate, make_shapes, train_tiny
from segdeploy.errors import UserInputError
from segdeploy.export.lint import lint_onnx
from segdeploy.precision import convert_to_fp16, fp16_weight_fraction

NUM_CLASSES = 4
TRACE_SHAPE = (2, 3, 32, 32)
TEST_SHAPE = (3, 3, 37, 53)

# mIoU (against the labels) may move by at most one point. Measured on trained
# nets: |drift| <= 6e-4 for one-stage SegNet-style nets like the one below,
# <= 2e-4 for the continuous zoo models (benchmarks/results/fp16_drift.md).
# The zoo SegNet (five unpooling stages) drifts far more: see that file.
MAX_MIOU_DRIFT = 0.01


def _conv_bn_relu(c_in: int, c_out: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=dilation, dilation=dilation, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class TinyConvNet(nn.Module):
    """Conv/BN/ReLU, max pool, dilated conv, transposed conv, bilinear resize to the input size."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_conv_bn_relu(3, width), nn.MaxPool2d(2), _conv_bn_relu(width, width, 2))
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.classifier = nn.Conv2d(width, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classifier(F.relu(self.up(self.encoder(x))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _export(model: nn.Module, path, example_shape=TRACE_SHAPE) -> onnx.ModelProto:
    return export_stock_onnx(model, path, example_shape)


@pytest.fixture(scope="module")
def shapes_data():
    train = make_shapes(96, size=(32, 32), seed=0)
    held_out = make_shapes(TEST_SHAPE[0] * 2, size=TEST_SHAPE[2:], seed=1)
    return train, held_out


@pytest.fixture(scope="module")
def trained(shapes_data, tmp_path_factory):
    """name -> (torch model, FP32 ONNX, FP16 ONNX, kept nodes, training history); trained for a few seconds."""
    (images, labels), _ = shapes_data
    directory = tmp_path_factory.mktemp("fp16")
    models = {}
    for name, cls in (("conv", TinyConvNet), ("segnet", TinySegNet)):
        torch.manual_seed(0)
        model = cls()
        history = train_tiny(model, images, labels, steps=80, lr=1e-2, batch_size=8, seconds=6, seed=0)
        fp32 = _export(model, directory / f"{name}.onnx")
        fp16, kept = convert_to_fp16(fp32)
        models[name] = (model, fp32, fp16, kept, history)
    return models


# --------------------------------------------------------------------------- the dataset
def test_shapes_dataset_is_deterministic_per_seed():
    images, labels = make_shapes(6, size=(24, 40), seed=3)
    again = make_shapes(6, size=(24, 40), seed=3)
    other = make_shapes(6, size=(24, 40), seed=4)
    assert images.dtype == np.float32 and images.shape == (6, 3, 24, 40)
    assert labels.dtype == np.int64 and labels.shape == (6, 24, 40)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(labels, again[1])
    assert not np.array_equal(images, other[0])
    assert set(np.unique(labels)) <= set(range(NUM_CLASSES))
    assert abs(float(images.mean())) < 0.5 and 0.5 < float(images.std()) < 1.5  # normalised


def test_shapes_dataset_draws_every_class_and_channel_count():
    _, labels = make_shapes(40, size=(32, 32), num_classes=len(SHAPE_KINDS) + 1, seed=0)
    assert set(np.unique(labels)) == set(range(len(SHAPE_KINDS) + 1))
    images, _ = make_shapes(2, size=(16, 16), in_channels=1, seed=0)
    assert images.shape == (2, 1, 16, 16)


def test_shapes_dataset_rejects_impossible_requests():
    with pytest.raises(UserInputError, match="num_classes"):
        make_shapes(2, num_classes=len(SHAPE_KINDS) + 2)
    with pytest.raises(UserInputError, match="height, width >= 8"):
        make_shapes(2, size=(4, 64))


def test_tiny_training_beats_predicting_background(trained, shapes_data):
    _, (images, labels) = shapes_data
    model, *_, history = trained["conv"]
    with torch.no_grad():
        trained_miou = evaluate(model(torch.from_numpy(images)), labels, NUM_CLASSES)
    background_miou = mean_iou(np.zeros_like(labels), labels, NUM_CLASSES)
    assert not model.training
    assert np.mean(history["losses"][-5:]) < history["losses"][0]
    assert trained_miou > background_miou + 0.05, (trained_miou, background_miou)


# --------------------------------------------------------------------------- the FP16 model
@pytest.mark.parametrize("name", ["conv", "segnet"])
def test_fp16_model_has_float32_io_fp16_weights_and_passes_checks(trained, name):
    _, fp32, fp16, _, _ = trained[name]
    float32 = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in fp16.graph.input] == [float32]
    assert [v.type.tensor_type.elem_type for v in fp16.graph.output] == [float32]
    assert [v.name for v in fp16.graph.input] == ["input"] and [v.name for v in fp16.graph.output] == ["logits"]
    assert fp16_weight_fraction(fp32) == 0.0
    assert fp16_weight_fraction(fp16) > 0.99
    onnx.checker.check_model(fp16, full_check=True)
    report = lint_onnx(fp16)
    assert report.ok, [issue.message for issue in report.issues]


@pytest.mark.parametrize("name", ["conv", "segnet"])
def test_fp16_drift_on_trained_model_is_within_thresholds(trained, shapes_data, name):
    _, (images, labels) = shapes_data
    _, fp32, fp16, _, _ = trained[name]
    x = images[: TEST_SHAPE[0]]
    reference, candidate = run_onnx(fp32, x), run_onnx(fp16, x)
    assert candidate.dtype == np.float32 and candidate.shape == (TEST_SHAPE[0], NUM_CLASSES, *TEST_SHAPE[2:])
    comparison = compare(candidate, reference, None, thresholds_for("fp16", index_unpooling=name == "segnet"))
    assert comparison.passed, comparison.failed
    drift = evaluate(candidate, labels[: TEST_SHAPE[0]], NUM_CLASSES) - evaluate(
        reference, labels[: TEST_SHAPE[0]], NUM_CLASSES
    )
    assert abs(drift) <= MAX_MIOU_DRIFT


def test_reductions_stay_fp32_and_are_reported(trained):
    *_, fp16, kept, _ = trained["segnet"]
    nodes = {node.name: node for node in fp16.graph.node}
    assert kept and all(name in nodes for name in kept)
    kept_ops = {nodes[name].op_type for name in kept}
    assert "ReduceMean" in kept_ops  # the 1x1 pyramid bin
    # The unpooling's comparisons stay FP16: both sides come from the same FP16 slots, so they are exact.
    assert not kept_ops & {"Equal", "Where", "MatMul", "Conv"}


def test_fp32_paths_do_not_round_trip_through_fp16(trained):
    *_, fp16, _, _ = trained["segnet"]
    producer = {out: node for node in fp16.graph.node for out in node.output}
    for node in fp16.graph.node:
        if node.op_type == "Cast" and node.attribute[0].i == onnx.TensorProto.FLOAT:
            inner = producer.get(node.input[0])
            assert inner is None or inner.op_type != "Cast", f"{inner.name} -> {node.name} rounds an FP32 value"


def test_fp16_unpooling_after_conv_relu_keeps_one_value_per_window(tmp_path):
    """Every 2x2 window of the unpooled map holds exactly one (nonzero) value, in FP16 too.

    ONNX Runtime's CPU EP has no FP16 Conv/Relu/MaxPool kernels at opset 17: it
    runs them in FP32 and drops the casts between them, so a MaxPool of the
    Relu saw unrounded values while the slots (FP16 Slices) saw rounded ones;
    no slot equalled that max and most values vanished. Exported through
    ``export_onnx`` because this test's ``_export`` ends at opset 18 (no Pad
    adapter to 17), where ORT happened not to show it.
    """

    class ConvUnpool(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = F.relu(self.conv(x))
            pooled, indices = F.max_pool2d(y, 2, 2, return_indices=True)
            # nonzero values, so a dropped one shows as an empty window
            return F.max_unpool2d(pooled + 1.0, indices, 2, 2, output_size=y.shape[-2:])

    from segdeploy.pipeline import export_onnx

    torch.manual_seed(0)
    export_onnx(ConvUnpool().eval(), tmp_path / "unpool.onnx", input_shape=TRACE_SHAPE, opset=17, verify=False)
    fp32 = onnx.load(tmp_path / "unpool.onnx")
    fp16, _ = convert_to_fp16(fp32)
    x = np.random.default_rng(2).normal(size=TEST_SHAPE).astype(np.float32)
    height, width = TEST_SHAPE[2] // 2 * 2, TEST_SHAPE[3] // 2 * 2
    for model in (fp32, fp16):
        out = run_onnx(model, x)
        windows = out[..., :height, :width].reshape(*out.shape[:2], height // 2, 2, width // 2, 2)
        assert np.all(np.count_nonzero(windows, axis=(3, 5)) == 1)
        assert not out[..., height:, :].any() and not out[..., width:].any()


def test_float_shape_arithmetic_stays_fp32(tmp_path):
    """Bin edges computed in float from the input's width: FP16 holds integers only up to 2048.

    At W = 6155 and 3 bins, 2 * W = 12310 is 12312 in FP16 (and the position
    ramp loses its odd values), so FP16 shape arithmetic moves bin edges or
    breaks the matrix shapes. A single hot column on the edge at 4103 exposes it.
    """

    class FloatBinPool(nn.Module):
        """Average pooling over the width into 3 bins, with float bin edges as user code often writes it."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            width, bins = x.shape[-1], 3
            index = torch.arange(bins, dtype=torch.float32)
            start, end = torch.floor(index * width / bins), torch.ceil((index + 1) * width / bins)
            position = torch.arange(width, dtype=torch.float32)
            mask = ((position >= start[:, None]) & (position < end[:, None])).to(x.dtype)
            return x @ (mask / mask.sum(dim=1, keepdim=True)).T

    fp16, kept = convert_to_fp16(_export(FloatBinPool(), tmp_path / "pool.onnx", example_shape=(2, 1, 16, 16)))
    assert {"Floor", "Ceil"} <= {node.op_type for node in fp16.graph.node if node.name in kept}
    x = np.zeros((1, 1, 2, 6155), np.float32)
    x[..., 4103] = 1.0
    expected = F.adaptive_avg_pool2d(torch.from_numpy(x), (2, 3)).numpy()
    np.testing.assert_allclose(run_onnx(fp16, x), expected, rtol=2e-3, atol=1e-6)


def _resize_model(scales_as: str) -> onnx.ModelProto:
    """Conv then Resize x2 whose scales come from a Constant node or an initializer."""
    helper, T = onnx.helper, onnx.TensorProto
    weight = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 3, 1, 1)).astype(np.float32), "w")
    scales = onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [helper.make_node("Conv", ["input", "w"], ["conv"], name="conv")]
    initializers = [weight]
    if scales_as == "constant":
        nodes.append(helper.make_node("Constant", [], ["scales"], value=scales, name="scales_constant"))
    else:
        initializers.append(scales)
    nodes.append(helper.make_node("Resize", ["conv", "", "scales"], ["logits"], mode="linear", name="resize"))
    graph = helper.make_graph(
        nodes,
        "resize",
        [helper.make_tensor_value_info("input", T.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", T.FLOAT, ["n", 4, None, None])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


@pytest.mark.parametrize("scales_as", ["constant", "initializer"])
def test_resize_scales_stay_float32(scales_as):
    model = _resize_model(scales_as)
    fp16, kept = convert_to_fp16(model)
    scales_types = {t.name: t.data_type for t in fp16.graph.initializer}
    scales_types.update({n.output[0]: n.attribute[0].t.data_type for n in fp16.graph.node if n.op_type == "Constant"})
    resize = next(node for node in fp16.graph.node if node.op_type == "Resize")
    assert scales_types[resize.input[2]] == onnx.TensorProto.FLOAT
    assert "resize" in kept
    x = np.random.default_rng(1).normal(size=(2, 3, 5, 7)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(fp16, x), run_onnx(model, x), rtol=0, atol=5e-3)
    assert run_onnx(fp16, x).shape == (2, 4, 10, 14)


def test_input_model_is_left_unchanged_and_fp16_model_is_refused():
    model = _resize_model("initializer")
    before = model.SerializeToString()
    fp16, _ = convert_to_fp16(model)
    assert model.SerializeToString() == before
    with pytest.raises(UserInputError, match="already holds FP16"):
        convert_to_fp16(fp16)


# --------------------------------------------------------------------------- graph-reasoning patterns
class _PixelMean(nn.Module):
    """GloRe-style projection to nodes: a sum over pixels by MatMul, then divided by H*W."""

    def __init__(self) -> None:
        super().__init__()
        self.state = nn.Conv2d(3, 4, 1)
        self.proj = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        n, _, h, w = x.shape
        nodes = self.state(x).flatten(2) @ self.proj(x).flatten(2).transpose(1, 2) / (h * w)
        return x[:, :1] + nodes.sum(dim=(1, 2)).view(n, 1, 1, 1)


def test_a_sum_over_pixels_made_a_mean_stays_finite_in_fp16(tmp_path):
    from segdeploy.pipeline import export_onnx

    model = _PixelMean().eval()
    with torch.no_grad():
        for conv in (model.state, model.proj):
            conv.weight.fill_(0.5)
            conv.bias.fill_(1.0)
    path = tmp_path / "mean16.onnx"
    result = export_onnx(model, path, input_shape=(1, 3, 32, 32), precision="fp16", verify=False)
    matmuls = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul"]
    assert matmuls and set(matmuls) <= set(result.fp32_nodes)
    x = np.ones((1, 3, 256, 256), np.float32)  # the pixel sum reaches 4 * 65536: infinite in FP16
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.all(np.isfinite(got)) and np.allclose(got, expected, rtol=1e-2)


class _SharedTwo(nn.Module):
    def forward(self, x):
        return x.pow(2) - 2 * x  # the exporter stores the 2.0 once for Pow (FP32) and Mul (FP16)


def test_a_constant_shared_by_fp32_and_fp16_nodes_converts(tmp_path):
    from segdeploy.pipeline import export_onnx

    result = export_onnx(_SharedTwo(), tmp_path / "shared.onnx", input_shape=(1, 3, 8, 8), precision="fp16")
    assert result.verification.passed, result.verification.worst()


class _OneGraphUnit(nn.Module):
    """A stem, one graph convolutional unit (GCU's soft assignment of pixels to anchors), a classifier."""

    def __init__(self, width: int = 8) -> None:
        from segdeploy.models.gcu import GCU

        super().__init__()
        self.stem = _conv_bn_relu(3, width)
        self.unit = GCU(width, width, num_nodes=4)
        self.classifier = nn.Conv2d(width, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.unit(self.stem(x)))


def _zoo_gcu() -> nn.Module:
    return segdeploy.create_model("gcu", num_classes=3, **segdeploy.model_info("gcu").test_config)


@pytest.mark.parametrize(
    "build", [_OneGraphUnit, pytest.param(_zoo_gcu, marks=pytest.mark.slow)], ids=["one unit", "zoo gcu"]
)
def test_softmax_scores_from_distances_are_computed_in_fp32(tmp_path, build):
    from segdeploy.pipeline import export_onnx

    torch.manual_seed(0)
    model = build().eval()
    path = tmp_path / "gcu16.onnx"
    result = export_onnx(model, path, input_shape=(1, 3, 32, 32), precision="fp16", verify=False)
    graph = onnx.load(str(path)).graph
    producer = {out: node for node in graph.node for out in node.output}
    softmaxes = [n for n in graph.node if n.op_type == "Softmax"]
    assert softmaxes
    for softmax in softmaxes:
        node = producer[softmax.input[0]]
        while node.op_type in ("Mul", "Add", "Sub"):  # the chain from the distance MatMuls is FP32
            assert node.name in result.fp32_nodes, node.name
            node = producer[node.input[0]]
        assert node.op_type == "MatMul" and node.name in result.fp32_nodes
