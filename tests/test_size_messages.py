"""What a file promises about sizes, in words a user reads, and one line for a size off the rule."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
from helpers import STRICT_UNET
from typer.testing import CliRunner

from segdeploy.artifact import Metadata
from segdeploy.cli import app
from segdeploy.errors import UserInputError
from segdeploy.export.translate import readable_dim
from segdeploy.pipeline import ModelSpec, export_onnx
from segdeploy.runtime import open_runner
from segdeploy.shapes import size_problem

AXES = {"s77": "batch", "s53": "height", "s0": "width"}


@pytest.mark.parametrize(
    ("torch_dim", "name"),
    [
        ("32*((s53//32))", "height"),  # a SegNet unpooling without output_size, at its multiples of 32
        ("(s0//4)", "width/4"),
        ("8*((s53//32))", "height/4"),
        ("3*((s0//4))", "3*width/4"),
        ("2*s77", "2*batch"),
        ("((s0//16))*((s53//16)) + 1", "floor(height/16)*floor(width/16) + 1"),
        ("s12", "s12"),  # a symbol of no input axis stays as it is
        ("__import__('os').getcwd()", "__import__('os').getcwd()"),  # never evaluated
    ],
)
def test_output_dims_are_named_after_the_input_axes(torch_dim, name):
    assert readable_dim(torch_dim, AXES) == name


def test_static_and_dynamic_files_describe_their_sizes():
    assert Metadata(trace_shape=(1, 3, 64, 64), dynamic_axes=()).describe_sizes() == "fixed 1x3x64x64"
    dynamic = Metadata(trace_shape=(1, 3, 64, 64), min_size=32, size_multiple=32, max_size=1024)
    assert dynamic.describe_sizes() == "accepts only multiples of 32, at least 32 and at most 1024"


def test_a_size_off_the_rule_names_the_rule_and_the_nearest_sizes_both_ways():
    assert size_problem(96, 64, 16, 16) is None
    message = size_problem(100, 100, 16, 16)
    assert "multiples of 16, at least 16" in message and "nearest: 96x96 or 112x112" in message
    assert "nearest: 32x32" in size_problem(20, 8, 1, 32)
    assert "at most 128 (nearest: 128x128)" in size_problem(200, 130, 32, 32, 128)
    static = Metadata(trace_shape=(1, 3, 64, 64), dynamic_axes=())
    with pytest.raises(UserInputError, match="static, it takes only its fixed 1x3x64x64"):
        static.check_size((2, 3, 64, 64))


# Pooled by 8 and transposed back without an output size: full resolution at multiples of 8 only.
POOLED = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn

    class Pooled(nn.Module):
        def __init__(self, num_classes=4):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.up = nn.ConvTranspose2d(8, num_classes, 8, stride=8)

        def forward(self, x):
            return self.up(F.avg_pool2d(F.relu(self.conv(x)), 8))
    """
)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """POOLED (multiples of 8) exported at 32x48."""
    root = tmp_path_factory.mktemp("pooled")
    (root / "pooled.py").write_text(POOLED)
    out = root / "pooled.onnx"
    result = export_onnx(f"{root / 'pooled.py'}:Pooled", out, input_shape=(1, 3, 32, 48), spec=ModelSpec(num_classes=4))
    assert result.size_rule.multiple == 8 and result.verification.passed
    return out


def test_an_exported_files_output_dims_read_batch_height_width(pooled):
    (output,) = onnx.load(str(pooled)).graph.output
    dims = [d.dim_param or d.dim_value for d in output.type.tensor_type.shape.dim]
    assert dims == ["batch", 4, "height", "width"]  # torch wrote 8*((s53//8))


def test_the_onnx_runtime_runner_refuses_a_size_off_the_rule_in_one_line(pooled):
    with open_runner(pooled) as runner:
        assert runner.infer(np.zeros((1, 3, 40, 64), np.float32)).shape == (1, 4, 40, 64)
        with pytest.raises(UserInputError) as info:
            runner.infer(np.zeros((1, 3, 40, 60), np.float32))
    assert str(info.value) == (
        "bad input shape 1x3x40x60: this model takes heights and widths that are multiples of 8, "
        "at least 8 (nearest: 40x56 or 40x64)"
    )


def test_an_export_at_a_shape_the_model_raises_on_names_the_multiple_and_the_nearest_shapes(tmp_path):
    (tmp_path / "unet.py").write_text(STRICT_UNET)
    result = CliRunner().invoke(
        app, ["export", f"{tmp_path / 'unet.py'}:StrictUNet", "--input-shape", "1x3x100x72", "-o", "u.onnx"]
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    (line,) = result.output.strip().splitlines()
    assert "Sizes of tensors" not in line  # torch's raw message, in the user's words instead:
    assert line == (
        "error: bad input shape 1x3x100x72: the model raises there and runs at heights and widths that are "
        "multiples of 16 (nearest: 1x3x96x64 or 1x3x112x80; --verbose shows the model's error)"
    )


# Strided down, upsampled by 2 without a size: at an odd side the output is one pixel short.
HALVING = textwrap.dedent(
    """
    import torch.nn.functional as F
    from torch import nn

    class Halving(nn.Module):
        def __init__(self, num_classes=2):
            super().__init__()
            self.down = nn.Conv2d(3, num_classes, 3, stride=2, padding=1)

        def forward(self, x):
            return F.interpolate(self.down(x[:, :, : x.shape[2] // 2 * 2, : x.shape[3] // 2 * 2]), scale_factor=2.0)
    """
)


def test_a_trace_shape_off_the_rule_the_capture_finds_is_refused_with_the_nearest_sizes(tmp_path):
    (tmp_path / "halving.py").write_text(HALVING)
    spec = f"{tmp_path / 'halving.py'}:Halving"
    with pytest.raises(UserInputError, match=r"bad input shape 1x3x33x40: .*multiples of 2.*nearest: 32x40 or 34x40"):
        export_onnx(spec, tmp_path / "h.onnx", input_shape=(1, 3, 33, 40), verify=False)
    assert export_onnx(spec, tmp_path / "h.onnx", input_shape=(1, 3, 32, 40)).metadata.size_multiple == 2
