"""TensorRT 10 lint on small hand-built ONNX graphs, and its CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from segdeploy.cli import app
from segdeploy.errors import UserInputError
from segdeploy.export.lint import lint_onnx

IR_VERSION = 9  # onnx 1.23 writes IR 14 by default; ONNX Runtime 1.31 loads <= 13


def _model(nodes, *, opset=17, extra_opsets=(), initializers=(), inputs=None, outputs=None) -> onnx.ModelProto:
    inputs = inputs or [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])]
    outputs = outputs or [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", "K", "H2", "W2"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def _clean_model(**resize_attrs) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.zeros((4, 3, 3, 3), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    attrs = {"mode": "linear", "coordinate_transformation_mode": "half_pixel", **resize_attrs}
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Resize", ["r", "", "scales"], ["logits"], name="resize", **attrs),
    ]
    return _model(nodes, initializers=[weight, scales])


def _ops_with_errors(report) -> set[str]:
    return {i.op_type for i in report.errors}


def test_clean_conv_relu_resize_model_passes():
    report = lint_onnx(_clean_model())
    assert report.ok and not report.issues
    assert report.opset == 17 and report.ir_version == IR_VERSION
    assert report.summary() == "TensorRT 10: ok (3 nodes, 0 warnings)"


def test_maxpool_with_indices_output_is_an_error():
    nodes = [helper.make_node("MaxPool", ["input"], ["logits", "idx"], kernel_shape=[2, 2], strides=[2, 2])]
    report = lint_onnx(_model(nodes))
    assert not report.ok
    assert "MaxPool" in _ops_with_errors(report)
    assert "Indices" in report.errors[0].message


def test_maxunpool_is_an_error():
    nodes = [
        helper.make_node("MaxPool", ["input"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("MaxUnpool", ["p", "idx"], ["logits"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    assert {"MaxPool", "MaxUnpool"} <= _ops_with_errors(lint_onnx(_model(nodes)))


def test_scatternd_through_maxpool_indices_is_flagged_as_stock_unpooling():
    nodes = [
        helper.make_node("MaxPool", ["input"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Unsqueeze", ["idx", "axes"], ["idx5"]),
        helper.make_node("ScatterND", ["input", "idx5", "p"], ["logits"]),
    ]
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    report = lint_onnx(_model(nodes, initializers=[axes]))
    scatter = [i for i in report.errors if i.op_type == "ScatterND"]
    assert scatter and "MaxPool indices" in scatter[0].message


def test_custom_domain_is_an_error_but_a_tensorrt_plugin_domain_only_warns():
    custom = _model(
        [helper.make_node("FusedConv", ["input"], ["logits"], domain="com.microsoft")],
        extra_opsets=[("com.microsoft", 1)],
    )
    report = lint_onnx(custom)
    assert not report.ok and "com.microsoft::FusedConv" in report.errors[0].message

    plugin = _model(
        [helper.make_node("MyUpsample", ["input"], ["logits"], domain="trt.plugins")], extra_opsets=[("trt.plugins", 1)]
    )
    report = lint_onnx(plugin)
    assert report.ok and len(report.warnings) == 1 and "plugin" in report.warnings[0].message


@pytest.mark.parametrize(
    "attrs, severity, words",
    [
        ({"coordinate_transformation_mode": "tf_crop_and_resize"}, "error", "tf_crop_and_resize"),
        ({"coordinate_transformation_mode": "half_pixel_symmetric"}, "error", "half_pixel_symmetric"),
        ({"mode": "cubic"}, "warning", "cubic"),
        ({"antialias": 1}, "error", "antialias"),
        ({"mode": "nearest", "nearest_mode": "round_half_even"}, "error", "nearest_mode"),
    ],
)
def test_resize_modes_tensorrt_lacks_are_flagged(attrs, severity, words):
    report = lint_onnx(_clean_model(**attrs))
    flagged = [i for i in report.issues if i.op_type == "Resize"]
    assert [i.severity for i in flagged] == [severity]
    assert words in flagged[0].message


def test_opset_11_is_outside_the_supported_range():
    report = lint_onnx(_model([helper.make_node("Relu", ["input"], ["logits"])], opset=11))
    assert not report.ok and "13..20" in report.errors[0].message and report.opset == 11


def test_double_tensors_warn_and_string_casts_are_errors():
    double_in = [helper.make_tensor_value_info("input", TensorProto.DOUBLE, [1, 3, 8, 8])]
    report = lint_onnx(_model([helper.make_node("Relu", ["input"], ["logits"])], inputs=double_in))
    assert report.ok and "DOUBLE" in report.warnings[0].message

    cast = helper.make_node("Cast", ["input"], ["logits"], to=TensorProto.STRING)
    report = lint_onnx(
        _model([cast], outputs=[helper.make_tensor_value_info("logits", TensorProto.STRING, [1, 3, 8, 8])])
    )
    assert not report.ok and any("STRING" in i.message for i in report.errors)


def test_slice_with_computed_axes_is_an_error():
    nodes = [
        helper.make_node("Shape", ["input"], ["axes"]),
        helper.make_node("Slice", ["input", "starts", "ends", "axes"], ["logits"]),
    ]
    consts = [numpy_helper.from_array(np.array([0] * 4, np.int64), n) for n in ("starts", "ends")]
    report = lint_onnx(_model(nodes, initializers=consts))
    assert any(i.op_type == "Slice" and "'axes'" in i.message for i in report.errors)


def test_report_to_dict_is_json_serialisable():
    data = json.loads(json.dumps(lint_onnx(_clean_model(mode="cubic")).to_dict()))
    assert data["ok"] is True and data["issues"][0]["severity"] == "warning"


@pytest.fixture
def bad_files(tmp_path):
    good = tmp_path / "good.onnx"
    onnx.save(_clean_model(), good)
    data = good.read_bytes()
    files = {
        "random": np.random.default_rng(0).bytes(3000),
        "truncated": data[: len(data) // 2],
        "empty": b"",
    }
    for name, content in files.items():
        (tmp_path / f"{name}.onnx").write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "missing"])
def test_lint_refuses_non_onnx_files_in_one_line(bad_files, kind):
    path = bad_files / f"{kind}.onnx"
    with pytest.raises(UserInputError, match=f"{kind}.onnx"):
        lint_onnx(path)
    result = CliRunner().invoke(app, ["lint", str(path)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and f"{kind}.onnx" in lines[0]


def test_lint_cli_exit_codes_and_json(tmp_path):
    clean, broken = tmp_path / "clean.onnx", tmp_path / "broken.onnx"
    onnx.save(_clean_model(), clean)
    onnx.save(_clean_model(coordinate_transformation_mode="tf_crop_and_resize"), broken)
    runner = CliRunner()

    ok = runner.invoke(app, ["lint", str(clean)])
    assert ok.exit_code == 0 and "TensorRT 10: ok (3 nodes, 0 warnings)" in ok.output

    bad = runner.invoke(app, ["lint", str(broken)])
    assert bad.exit_code == 1
    assert "tf_crop_and_resize" in bad.output and "TensorRT 10: not supported" in bad.output

    as_json = runner.invoke(app, ["lint", str(broken), "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.output)["ok"] is False
    assert "exit code" in runner.invoke(app, ["lint", "--help"]).output.lower()


# --------------------------------------------------------------------------- Q/DQ rules
def _qdq_model(
    *,
    zero_point=None,
    act_scale=None,
    act_axis=None,
    weight_axis=0,
    op="Conv",
    float_weight=False,
    float_weight_qdq=False,
    int32_bias=False,
    unpool_through_qdq=False,
) -> onnx.ModelProto:
    """input -> Q -> DQ -> Conv (weights through DQ, per channel) -> logits; each keyword breaks one rule.

    With ``unpool_through_qdq`` an unpooling-style comparison (Slice and Max of the
    quantized input, then Equal) is added next to the conv.
    """
    zero_point = np.int8(0) if zero_point is None else zero_point
    act_scale = np.float32(0.05) if act_scale is None else act_scale
    out_channels, in_channels = 4, 3
    # Conv weights are [out, in, kh, kw]; ConvTranspose weights [in, out, kh, kw].
    shape = (out_channels, in_channels, 3, 3) if op == "Conv" else (in_channels, out_channels, 3, 3)
    weights = np.random.default_rng(0).integers(-127, 128, shape).astype(np.int8)
    scales_len = shape[weight_axis]
    inits = [
        numpy_helper.from_array(np.asarray(act_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.zeros(np.shape(act_scale), np.asarray(zero_point).dtype) + zero_point, "x_zero"),
        numpy_helper.from_array(np.full(scales_len, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(scales_len, np.int8), "w_zero"),
    ]
    act_attrs = {} if act_axis is None else {"axis": act_axis}
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zero"], ["xq"], name="q_input", **act_attrs),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"], name="dq_input", **act_attrs),
    ]
    conv_inputs = ["xdq", "w_float" if float_weight else "wdq"]
    if float_weight:
        inits.append(numpy_helper.from_array(weights.astype(np.float32) * 0.01, "w_float"))
    elif float_weight_qdq:  # float weights through Q -> DQ, as ModelOpt writes them
        inits.append(numpy_helper.from_array(weights.astype(np.float32) * 0.01, "w_float"))
        nodes += [
            helper.make_node(
                "QuantizeLinear", ["w_float", "w_scale", "w_zero"], ["w_int8"], name="q_weight", axis=weight_axis
            ),
            helper.make_node(
                "DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["wdq"], name="dq_weight", axis=weight_axis
            ),
        ]
    else:
        inits.append(numpy_helper.from_array(weights, "w_int8"))
        nodes.append(
            helper.make_node(
                "DequantizeLinear", ["w_int8", "w_scale", "w_zero"], ["wdq"], name="dq_weight", axis=weight_axis
            )
        )
    if int32_bias:
        inits += [
            numpy_helper.from_array(np.arange(out_channels, dtype=np.int32), "b_int32"),
            numpy_helper.from_array(np.full(out_channels, 5e-4, np.float32), "b_scale"),
            numpy_helper.from_array(np.zeros(out_channels, np.int32), "b_zero"),
        ]
        nodes.append(
            helper.make_node("DequantizeLinear", ["b_int32", "b_scale", "b_zero"], ["bdq"], name="dq_bias", axis=0)
        )
        conv_inputs.append("bdq")
    outputs = None
    if unpool_through_qdq:
        inits += [
            numpy_helper.from_array(np.array(v, np.int64), n)
            for n, v in (("s0", [0]), ("s1", [1]), ("e", [1 << 30]), ("ax", [3]), ("st", [2]))
        ]
        nodes += [
            helper.make_node("Slice", ["xdq", "s0", "e", "ax", "st"], ["slot0"], name="slot0"),
            helper.make_node("Slice", ["xdq", "s1", "e", "ax", "st"], ["slot1"], name="slot1"),
            helper.make_node("Max", ["slot0", "slot1"], ["window_max"], name="window_max"),
            helper.make_node("Equal", ["slot0", "window_max"], ["first"], name="first_is_max"),
        ]
        outputs = [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("first", TensorProto.BOOL, None),
        ]
    nodes.append(helper.make_node(op, conv_inputs, ["logits"], pads=[1, 1, 1, 1], name="conv"))
    return _model(nodes, initializers=inits, outputs=outputs)


def _rules(report, severity="error") -> set[str]:
    return {i.rule for i in report.issues if i.severity == severity}


@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
@pytest.mark.parametrize("weights", ["int8", "float-through-qdq"])
def test_well_formed_qdq_model_lints_clean(op, weights):
    model = _qdq_model(op=op, weight_axis=0 if op == "Conv" else 1, float_weight_qdq=weights != "int8")
    report = lint_onnx(model)
    assert report.ok and not report.issues, report.issues


def test_float_weights_through_qdq_on_the_wrong_axis_are_flagged():
    assert "qdq-weight-axis" in _rules(lint_onnx(_qdq_model(float_weight_qdq=True, weight_axis=1)))


@pytest.mark.parametrize(
    "kwargs, rule",
    [
        ({"zero_point": np.int8(3)}, "qdq-zero-point"),
        ({"zero_point": np.uint8(0)}, "qdq-int8"),
        ({"zero_point": np.uint8(0)}, "qdq-dequantize-input"),
        ({"int32_bias": True}, "qdq-dequantize-input"),
        ({"act_scale": np.full(3, 0.05, np.float32), "act_axis": 1}, "qdq-activation-scale"),
        ({"act_scale": np.float32(0.0)}, "qdq-activation-scale"),
        ({"weight_axis": 1}, "qdq-weight-axis"),
        ({"op": "ConvTranspose", "weight_axis": 0}, "qdq-weight-axis"),
        ({"unpool_through_qdq": True}, "qdq-unpool"),
    ],
    ids=[
        "nonzero-zero-point",
        "uint8-quantize",
        "uint8-dequantize",
        "int32-bias",
        "per-channel-activation",
        "zero-scale",
        "conv-weight-axis-1",
        "convtranspose-weight-axis-0",
        "comparison-after-qdq",
    ],
)
def test_each_qdq_rule_flags_its_bad_file(kwargs, rule):
    report = lint_onnx(_qdq_model(**kwargs))
    assert not report.ok
    assert rule in _rules(report), report.issues
    assert all(i.rule.startswith("qdq-") for i in report.errors), report.errors  # nothing else is wrong


def test_conv_left_in_float_in_a_quantized_model_is_a_warning():
    report = lint_onnx(_qdq_model(float_weight=True))
    assert report.ok and _rules(report, "warning") == {"qdq-float-conv"}
    assert "weights" in report.warnings[0].message and report.warnings[0].node == "conv"


def test_float_model_gets_no_qdq_rules():
    assert not [i for i in lint_onnx(_clean_model()).issues if i.rule.startswith("qdq-")]
