"""INT8 (explicit Q/DQ) ONNX from briefly trained tiny models, and calibration data loading.

Two test networks, trained for a few seconds on the shapes data (random weights
sit on near-ties): a residual conv net (Conv -> Add skip joins, ConvTranspose,
bilinear resize) and a SegNet-style net whose forward calls the export
rewrites' plain-PyTorch functions (window-slot unpooling, pooling-matrix
adaptive pooling), so its ONNX has the graph segdeploy's export writes. Both are
exported with ``torch.onnx.export`` at 2x3x32x32 and run at 37x53, batch 2.
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
from segdeploy.artifact import Metadata, Precision
from segdeploy.criteria import compare, thresholds_for
from segdeploy.data import evaluate, make_shapes, train_tiny
from segdeploy.errors import MissingDependencyError, UserInputError
from segdeploy.export.lint import check_qdq, lint_onnx
from segdeploy.quantize import load_calibration, modelopt_available, quantize_int8
from segdeploy.verify import verification_shapes, verify

NUM_CLASSES = 4
TRACE_SHAPE = (2, 3, 32, 32)
ODD_BATCH2 = (2, 3, 37, 53)
CALIB_IMAGES = 32
# INT8 may cost at most this much mIoU against the labels on these nets (measured drift <= 0.01, see
# benchmarks/results/precision.md; a quantizer that rounds the unpooling's comparisons loses more).
MAX_MIOU_DROP = 0.03


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ResidualNet(nn.Module):
    """Stem, one residual block (Conv -> Add skip join), pool, transposed conv, resize to the input size."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(3, width)
        self.block = nn.Sequential(_conv_bn_relu(width, width), nn.Conv2d(width, width, 3, padding=1))
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.classifier = nn.Conv2d(width, NUM_CLASSES, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        y = F.relu(self.block(y) + y)
        y = self.classifier(F.relu(self.up(F.max_pool2d(y, 2))))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _export(model: nn.Module, path, opset: int = 17) -> onnx.ModelProto:
    return export_stock_onnx(model, path, TRACE_SHAPE, opset)


@pytest.fixture(scope="module")
def data():
    train = make_shapes(96, size=TRACE_SHAPE[2:], seed=0)
    calibration = make_shapes(CALIB_IMAGES, size=TRACE_SHAPE[2:], seed=2)[0]
    held_out = make_shapes(ODD_BATCH2[0] * 2, size=ODD_BATCH2[2:], seed=1)
    return train, calibration, held_out


@pytest.fixture(scope="module")
def quantized(data, tmp_path_factory):
    """name -> (FP32 ONNX, INT8 ONNX, report); each net trained for a few seconds first."""
    (images, labels), calibration, _ = data
    directory = tmp_path_factory.mktemp("int8")
    models = {}
    for name, cls in (("residual", ResidualNet), ("segnet", TinySegNet)):
        torch.manual_seed(0)
        model = cls()
        train_tiny(model, images, labels, steps=80, lr=1e-2, batch_size=8, seconds=8, seed=0)
        fp32 = _export(model, directory / f"{name}.onnx")
        int8, report = quantize_int8(fp32, calibration)
        models[name] = (fp32, int8, report)
    return models


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------- the INT8 model
@pytest.mark.parametrize("name", ["residual", "segnet"])
def test_int8_model_runs_at_odd_size_and_batch_2_and_lints_clean(quantized, data, name):
    _, int8, report = quantized[name]
    *_, (images, _) = data
    out = run_onnx(int8, images[: ODD_BATCH2[0]])
    assert out.dtype == np.float32 and out.shape == (ODD_BATCH2[0], NUM_CLASSES, *ODD_BATCH2[2:])
    assert np.isfinite(out).all()
    lint = lint_onnx(int8)
    assert lint.ok and not lint.issues, lint.issues
    metadata = {p.key: p.value for p in int8.metadata_props}
    assert metadata["precision"] == "int8" and metadata["quantizer"] == "ort"
    assert report.quantized_nodes and report.calibration_images == CALIB_IMAGES


@pytest.mark.parametrize("name", ["residual", "segnet"])
def test_int8_agreement_and_miou_are_within_thresholds(quantized, data, name):
    fp32, int8, _ = quantized[name]
    *_, (images, labels) = data
    x, y = images[: ODD_BATCH2[0]], labels[: ODD_BATCH2[0]]
    reference, candidate = run_onnx(fp32, x), run_onnx(int8, x)
    comparison = compare(candidate, reference, None, thresholds_for("int8", index_unpooling=name == "segnet"))
    assert comparison.passed, comparison.failed
    assert evaluate(candidate, y, NUM_CLASSES) >= evaluate(reference, y, NUM_CLASSES) - MAX_MIOU_DROP


def test_weights_are_int8_per_channel_with_zero_points_and_biases_stay_float(quantized):
    _, int8, _ = quantized["residual"]
    values = _initializers(int8)
    producer = {out: node for node in int8.graph.node for out in node.output}
    convs = [node for node in int8.graph.node if node.op_type in ("Conv", "ConvTranspose")]
    assert len(convs) == 5
    for conv in convs:
        weight_dq = producer[conv.input[1]]
        assert weight_dq.op_type == "DequantizeLinear" and values[weight_dq.input[0]].dtype == np.int8
        axis = next(a.i for a in weight_dq.attribute if a.name == "axis")
        channels = values[weight_dq.input[0]].shape[0 if conv.op_type == "Conv" else 1]
        assert axis == (0 if conv.op_type == "Conv" else 1) and values[weight_dq.input[1]].shape == (channels,)
        assert producer[conv.input[0]].op_type == "DequantizeLinear"
        if len(conv.input) > 2:
            assert conv.input[2] in values and values[conv.input[2]].dtype == np.float32  # no INT32 bias
    for node in int8.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zero_point = values[node.input[2]]
            assert zero_point.dtype == np.int8 and not zero_point.any()


def test_residual_add_reads_its_skip_input_through_qdq(quantized):
    _, int8, report = quantized["residual"]
    producer = {out: node for node in int8.graph.node for out in node.output}
    adds = [node for node in int8.graph.node if node.op_type == "Add" and node.name in report.residual_adds]
    assert len(adds) == 1
    kinds = sorted(producer[name].op_type for name in adds[0].input)
    assert kinds == ["Conv", "DequantizeLinear"]  # the conv output stays float: TensorRT fuses the Add into it


def test_join_of_two_conv_outputs_gets_a_new_qdq_pair_calibrated_on_fp32():
    """Conv -> Add <- Conv (a ResNet downsampling branch): the second output has no pair to reuse."""
    helper = onnx.helper
    rng = np.random.default_rng(0)
    weights = [
        onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), f"w{i}") for i in range(2)
    ]
    nodes = [
        helper.make_node("Conv", ["input", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1], name=f"conv{i}") for i in range(2)
    ]
    nodes.append(helper.make_node("Add", ["c0", "c1"], ["logits"], name="join"))
    graph = helper.make_graph(
        nodes,
        "join",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["n", 4, "h", "w"])],
        weights,
    )
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    calibration = rng.normal(size=(8, 3, 16, 16)).astype(np.float32)
    int8, report = quantize_int8(fp32, calibration)
    assert report.residual_adds == ["join"]
    values = _initializers(int8)
    producer = {out: node for node in int8.graph.node for out in node.output}
    join = next(node for node in int8.graph.node if node.name == "join")
    assert [producer[name].op_type for name in join.input] == ["Conv", "DequantizeLinear"]
    scale = values[producer[join.input[1]].input[1]]
    reference = run_onnx(fp32, calibration)  # c1's range is measured on the FP32 graph
    c1 = reference - run_onnx(_conv_only(fp32, "c0"), calibration)
    assert float(scale) == pytest.approx(float(np.abs(c1).max()) / 127, rel=1e-5)
    assert not check_qdq(int8) and run_onnx(int8, calibration[:2, :, :11, :13]).shape == (2, 4, 11, 13)


def _conv_only(model: onnx.ModelProto, output: str) -> onnx.ModelProto:
    """``model`` with one Conv's output as the graph output."""
    only = onnx.ModelProto()
    only.CopyFrom(model)
    only.graph.node.pop()  # the Add
    del only.graph.output[:]
    only.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
    return only


def test_unpooling_comparisons_and_pooling_matrices_stay_float(quantized):
    _, int8, report = quantized["segnet"]
    assert not check_qdq(int8)
    producer = {out: node for node in int8.graph.node for out in node.output}
    matmuls = [node for node in int8.graph.node if node.op_type == "MatMul"]
    assert matmuls and not any(
        producer.get(name) is not None and producer[name].op_type == "DequantizeLinear"
        for node in matmuls
        for name in node.input
    )
    assert all(name in " ".join(report.float_nodes) for name in (n.name for n in matmuls if n.name))


def test_quantizing_the_unpooling_comparisons_fails_lint(quantized, data):
    """ONNX Runtime's default op list (Slice, Max, Where...) is the known-bad placement: lint names it."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    fp32, _, _ = quantized["segnet"]
    _, calibration, _ = data

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": calibration[i : i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as tmp:
        onnx.save(fp32, Path(tmp) / "fp32.onnx")
        quantize_static(
            str(Path(tmp) / "fp32.onnx"),
            str(Path(tmp) / "bad.onnx"),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True},
        )
        bad = onnx.load(str(Path(tmp) / "bad.onnx"))
    assert {"qdq-unpool", "qdq-dequantize-input"} <= {issue.rule for issue in lint_onnx(bad).errors}


@pytest.mark.parametrize("name", ["residual", "segnet"])
def test_verify_passes_int8_and_rejects_a_badly_calibrated_file(quantized, data, name, tmp_path):
    """What ``segdeploy verify`` runs (noise inputs at the verification shapes, the int8 thresholds).

    The bad file is quantized the same way but calibrated on pixels that skipped the
    normalisation (a preprocessing mistake): its activation scales are wrong.
    """
    from segdeploy.runtime.ort_runner import OrtRunner

    fp32, int8, _ = quantized[name]
    raw_pixels = np.clip(data[1] * 0.25 + 0.5, 0.0, 1.0).astype(np.float32)
    files = {"fp32": fp32, "int8": int8, "bad": quantize_int8(fp32, raw_pixels)[0]}
    for key, proto in files.items():
        onnx.save(proto, tmp_path / f"{key}.onnx")
    shapes = verification_shapes(TRACE_SHAPE)
    metadata = Metadata(precision=Precision.INT8, rewrites=("max_unpool",) if name == "segnet" else ())
    reports = {
        key: verify(tmp_path / f"{key}.onnx", OrtRunner(tmp_path / "fp32.onnx"), shapes=shapes, metadata=metadata)
        for key in ("int8", "bad")
    }
    assert reports["int8"].passed, reports["int8"].worst()
    assert not reports["bad"].passed, reports["bad"].worst()


def test_int8_fp16_has_float32_io_and_fp16_qdq_at_opset_19(data, tmp_path):
    (images, labels), calibration, (held_out, _) = data
    torch.manual_seed(0)
    model = ResidualNet()
    train_tiny(model, images, labels, steps=40, lr=1e-2, batch_size=8, seconds=4, seed=0)
    fp32 = _export(model, tmp_path / "residual19.onnx", opset=19)
    mixed, report = quantize_int8(fp32, calibration, fp16=True)
    assert report.precision == "int8-fp16"
    assert [v.type.tensor_type.elem_type for v in (*mixed.graph.input, *mixed.graph.output)] == [1, 1]
    scales = {node.input[1] for node in mixed.graph.node if node.op_type == "DequantizeLinear"}
    assert {t.data_type for t in mixed.graph.initializer if t.name in scales} == {onnx.TensorProto.FLOAT16}
    assert lint_onnx(mixed).ok and not check_qdq(mixed)
    x = held_out[: ODD_BATCH2[0]]
    comparison = compare(run_onnx(mixed, x), run_onnx(fp32, x), None, thresholds_for("int8"))
    assert comparison.passed, comparison.failed


def test_int8_fp16_below_opset_19_is_refused(quantized, data):
    fp32, _, _ = quantized["residual"]
    with pytest.raises(UserInputError, match="opset 19"):
        quantize_int8(fp32, data[1], fp16=True)


# --------------------------------------------------------------------------- bad input to the quantizer
def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message and message
    return message


def test_quantizing_without_calibration_data_is_refused(quantized):
    fp32, _, _ = quantized["residual"]
    with pytest.raises(UserInputError, match="calibration") as exc_info:
        quantize_int8(fp32, None)
    _one_line(exc_info)


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((4, 1, 32, 32), np.float32), "channels"),
        (np.zeros((3, 32, 32), np.float32), "float32 \\[N, C, H, W\\]"),
        (np.zeros((4, 3, 32, 32), np.float64), "float32"),
        (np.full((4, 3, 32, 32), np.nan, np.float32), "NaN"),
    ],
    ids=["channels", "rank", "dtype", "nan"],
)
def test_bad_calibration_arrays_are_refused(quantized, array, words):
    fp32, _, _ = quantized["residual"]
    with pytest.raises(UserInputError, match=words) as exc_info:
        quantize_int8(fp32, array)
    _one_line(exc_info)


def test_already_quantized_model_and_unknown_quantizer_are_refused(quantized, data):
    _, int8, _ = quantized["residual"]
    with pytest.raises(UserInputError, match="already quantized"):
        quantize_int8(int8, data[1])
    with pytest.raises(UserInputError, match="unknown quantizer"):
        quantize_int8(int8, data[1], quantizer="tensorrt")


@pytest.mark.skipif(modelopt_available(), reason="ModelOpt is installed here")
def test_modelopt_requested_but_absent_is_a_missing_dependency(quantized, data):
    fp32, _, _ = quantized["residual"]
    with pytest.raises(MissingDependencyError, match=r"segdeploy\[modelopt\]") as exc_info:
        quantize_int8(fp32, data[1], quantizer="modelopt")
    assert exc_info.value.exit_code == 5
    _one_line(exc_info)


# --------------------------------------------------------------------------- calibration data
def _write_images(directory, images: np.ndarray, mode: str = "RGB") -> None:
    """Save normalised shapes images as 8-bit files, undoing the dataset's (x - 0.5) / 0.25."""
    from PIL import Image

    directory.mkdir(exist_ok=True)
    for index, image in enumerate(images):
        pixels = np.clip((image * 0.25 + 0.5) * 255 + 0.5, 0, 255).astype(np.uint8)
        array = pixels[0] if mode == "L" else pixels.transpose(1, 2, 0)
        Image.fromarray(array, mode=mode).save(directory / f"{index:03d}.png")


def test_image_directory_is_resized_and_normalised_like_the_model_input(tmp_path):
    pytest.importorskip("PIL")
    images, _ = make_shapes(5, size=(40, 56), seed=7)
    _write_images(tmp_path / "calib", images)
    (tmp_path / "calib" / "notes.txt").write_text("not an image")
    same = load_calibration(tmp_path / "calib", shape=(40, 56), in_channels=3, calib_size=4, mean=0.5, std=0.25)
    assert same.dtype == np.float32 and same.shape == (4, 3, 40, 56)
    expected = (np.clip(images[:4] * 0.25 + 0.5, 0, 1) - 0.5) / 0.25  # the files clip the noise to [0, 1]
    np.testing.assert_allclose(same, expected, atol=0.5 / 255 / 0.25 + 1e-6)  # 8-bit rounding
    resized = load_calibration(tmp_path / "calib", shape=(33, 47), in_channels=3)
    assert resized.shape == (5, 3, 33, 47)
    # Default statistics are ImageNet's: a mid-grey pixel lands near zero.
    assert abs(float(resized.mean())) < 1.0


def test_grayscale_images_and_a_normalize_callable(tmp_path):
    pytest.importorskip("PIL")
    images, _ = make_shapes(3, size=(32, 32), in_channels=1, seed=1)
    _write_images(tmp_path / "gray", images, mode="L")
    loaded = load_calibration(tmp_path / "gray", shape=(32, 32), in_channels=1, normalize=lambda x: x * 2 - 1)
    assert loaded.shape == (3, 1, 32, 32) and loaded.min() >= -1 and loaded.max() <= 1


def test_npy_calibration_is_loaded_without_pickles(tmp_path, code_running_payload):
    batches = make_shapes(6, size=(32, 32), seed=3)[0]
    np.save(tmp_path / "calib.npy", batches)
    np.testing.assert_array_equal(
        load_calibration(tmp_path / "calib.npy", shape=(32, 32), in_channels=3, calib_size=4), batches[:4]
    )
    payload, marker = code_running_payload
    np.save(tmp_path / "evil.npy", np.array([payload], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="pickles"):
        load_calibration(tmp_path / "evil.npy", shape=(32, 32), in_channels=3)
    assert not marker.exists()


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "does not exist"),
        ("empty-dir", "holds no images"),
        ("text-only-dir", "holds no images"),
        ("corrupt-image", "cannot read calibration image"),
        ("rgb-for-gray-model", "3 channel"),
        ("gray-for-rgb-model", "1 channel"),
        ("rgba-for-rgb-model", "4 channel"),
        ("npy-rank", "rank 4"),
        ("npy-channels", "channels"),
        ("npy-dtype", "float64"),
        ("npy-truncated", "not a readable .npy"),
        ("other-file", "neither a directory"),
    ],
)
def test_bad_calibration_data_is_refused_in_one_line(tmp_path, case, words):
    pytest.importorskip("PIL")
    from PIL import Image

    in_channels = 1 if case == "rgb-for-gray-model" else 3
    path = tmp_path / "calib"
    if case in (
        "empty-dir",
        "text-only-dir",
        "corrupt-image",
        "rgb-for-gray-model",
        "gray-for-rgb-model",
        "rgba-for-rgb-model",
    ):
        path.mkdir()
    if case == "text-only-dir":
        (path / "readme.txt").write_text("no images here")
    elif case == "corrupt-image":
        (path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    elif case in ("rgb-for-gray-model", "gray-for-rgb-model", "rgba-for-rgb-model"):
        mode = {"rgb-for-gray-model": "RGB", "gray-for-rgb-model": "L", "rgba-for-rgb-model": "RGBA"}[case]
        Image.new(mode, (8, 8)).save(path / "image.png")
    elif case.startswith("npy-"):
        path = tmp_path / "calib.npy"
        arrays = {
            "npy-rank": np.zeros((2, 32, 32), np.float32),
            "npy-channels": np.zeros((2, 1, 8, 8), np.float32),
            "npy-dtype": np.zeros((2, 3, 8, 8)),
        }
        if case == "npy-truncated":
            np.save(path, np.zeros((2, 3, 8, 8), np.float32))
            path.write_bytes(path.read_bytes()[:100])
        else:
            np.save(path, arrays[case])
    elif case == "other-file":
        path = tmp_path / "calib.txt"
        path.write_text("x")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UserInputError, match=words) as exc_info:
        load_calibration(path, shape=(32, 32), in_channels=in_channels)
    _one_line(exc_info)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_input_model_is_left_unchanged(quantized, data):
    fp32, _, _ = quantized["segnet"]
    before = fp32.SerializeToString()
    quantize_int8(fp32, data[1][:8])
    assert fp32.SerializeToString() == before


def test_int8_thresholds_judge_agreement_and_p99_and_cover_int8_fp16():
    plain, unpool = thresholds_for("int8"), thresholds_for("int8", index_unpooling=True)
    assert plain.criterion == unpool.criterion == "agreement+p99"
    assert plain.max_rel_error is None and unpool.max_rel_error is None
    # The plain bound sits between the worst good file (p99 0.19) and the best badly calibrated one (0.265);
    # the agreement floor below the worst good file (0.874, benchmarks/results/precision.md).
    assert 0.19 < plain.p99_rel_error < 0.265 and plain.min_agreement < 0.874
    # SegNet's floor keeps the worst good file (p99 0.58) with margin.
    assert unpool.p99_rel_error >= 1.3 * 0.58
    assert unpool.min_agreement <= plain.min_agreement and unpool.p99_rel_error >= plain.p99_rel_error
    assert thresholds_for("int8-fp16") == plain


# --------------------------------------------------------------------------- segdeploy export --precision int8
@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory, data):
    """A zoo U-Net (test width) trained for a few seconds, its checkpoint and an .npy of calibration batches."""
    (images, labels), calibration, _ = data
    root = tmp_path_factory.mktemp("unet-int8")
    torch.manual_seed(0)
    model = segdeploy.create_model("unet", num_classes=4, **segdeploy.model_info("unet").test_config)
    train_tiny(model, images, labels, steps=60, seconds=20, seed=0)
    torch.save(model.state_dict(), root / "unet.pt")
    np.save(root / "calib.npy", calibration.astype(np.float32))
    return root


def _cli(*args: str):
    from typer.testing import CliRunner

    from segdeploy.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_exports_an_int8_file_that_verifies_and_lints_clean(trained_unet):
    out = trained_unet / "unet.int8.onnx"
    result = _cli(
        "export",
        "unet",
        "--config",
        "width_mult=0.125",
        "--num-classes",
        "4",
        "--input-shape",
        f"1x3x{TRACE_SHAPE[2]}x{TRACE_SHAPE[3]}",
        "--weights",
        str(trained_unet / "unet.pt"),
        "--precision",
        "int8",
        "--calib",
        str(trained_unet / "calib.npy"),
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    assert "int8 (ort)" in result.output and "[agreement+p99, int8]" in result.output
    proto = onnx.load(str(out))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in proto.graph.node}
    assert lint_onnx(proto).ok and not check_qdq(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["precision"] == "int8" and meta["dynamic_axes"] == "batch,height,width"
    session = ort.InferenceSession(str(out))
    got = session.run(None, {"input": np.random.default_rng(0).standard_normal(ODD_BATCH2, dtype=np.float32)})[0]
    assert got.shape == (ODD_BATCH2[0], 4, *ODD_BATCH2[2:])


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        ([], 2, "needs calibration data"),
        (["--calib", "{empty}"], 2, "no images"),
        (["--calib", "{gray}"], 2, "channel"),
        (["--calib", "{npy}", "--quantizer", "bogus"], 2, "unknown quantizer"),
    ],
)
def test_cli_int8_bad_input_is_one_line_and_writes_nothing(tmp_path, extra, code, words):
    from PIL import Image

    (tmp_path / "empty").mkdir()
    (tmp_path / "gray").mkdir()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "gray" / "a.png")
    np.save(tmp_path / "calib.npy", np.zeros((2, 3, 32, 32), np.float32))
    places = {
        "{empty}": str(tmp_path / "empty"),
        "{gray}": str(tmp_path / "gray"),
        "{npy}": str(tmp_path / "calib.npy"),
    }
    args = [places.get(a, a) for a in extra]
    out = tmp_path / "x.onnx"
    result = _cli(
        "export",
        "unet",
        "--config",
        "width_mult=0.125",
        "--input-shape",
        "1x3x32x32",
        "--precision",
        "int8",
        *args,
        "-o",
        str(out),
    )
    assert result.exit_code == code, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], result.output
    assert not out.exists() and not list(tmp_path.glob(".x.onnx*"))


@pytest.mark.skipif(modelopt_available(), reason="ModelOpt is installed here")
def test_cli_modelopt_requested_but_absent_exits_5(tmp_path):
    np.save(tmp_path / "calib.npy", np.zeros((2, 3, 32, 32), np.float32))
    result = _cli(
        "export",
        "unet",
        "--config",
        "width_mult=0.125",
        "--input-shape",
        "1x3x32x32",
        "--precision",
        "int8",
        "--calib",
        str(tmp_path / "calib.npy"),
        "--quantizer",
        "modelopt",
        "-o",
        str(tmp_path / "x.onnx"),
    )
    assert result.exit_code == 5 and "segdeploy[modelopt]" in result.output
    assert not (tmp_path / "x.onnx").exists()
