"""Helpers shared by tests: the zoo's names and tiers, weights that behave like trained ones, small user models
as people write them, and tiny ONNX files for the TensorRT build tests."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segdeploy.export.rewrites import adaptive_avg_pool2d_exact, unpool_first_max

# The zoo as the project promises it, written out so the registry is checked against it (not against itself).
ZOO = (
    "fcn8s",
    "unet",
    "segnet",
    "pspnet",
    "deeplabv1",
    "deeplabv2",
    "deeplabv3",
    "deeplabv3plus",
    "unetpp",
    "u2net",
    "glore",
    "gcu",
    "ginet",
)

# Zoo models whose small config exports in a few seconds, one per kind of graph the export handles: skip
# concatenation (U-Net), index unpooling (SegNet) and a plain VGG stack with dilations (DeepLab v1). Tests that
# export every zoo model run these in the quick tier and the others in the heavy tier (`-m slow`).
QUICK_ZOO = ("unet", "segnet", "deeplabv1")


def zoo_params(quick: tuple[str, ...] = QUICK_ZOO) -> list[Any]:
    """Every zoo name as a pytest parameter; those outside ``quick`` are marked ``slow`` (the heavy tier)."""
    return [name if name in quick else pytest.param(name, marks=pytest.mark.slow) for name in ZOO]


def calibrate_batchnorm(model: nn.Module, shape: tuple[int, ...], batches: int = 3, seed: int = 0) -> nn.Module:
    """BatchNorm statistics from a few random batches (cumulative average), as any trained model has; eval mode after.

    Untouched BatchNorm layers (mean 0, variance 1) make deep nets blow up or collapse, which hides
    export bugs and fakes near-ties; calibrated statistics keep activations in a realistic range.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(shape, generator=generator))
    return model.eval()


def export_stock_onnx(model: nn.Module, path: Any, example_shape: tuple[int, ...], opset: int = 17) -> Any:
    """``model`` through the stock dynamo exporter, dynamic N/H/W: an FP32 file for the FP16 and INT8 passes."""
    import onnx

    dim = torch.export.Dim
    axes = {0: dim("batch", min=1, max=64), 2: dim("height", min=8, max=8192), 3: dim("width", min=8, max=8192)}
    torch.onnx.export(
        model.eval(),
        (torch.randn(*example_shape),),
        path,
        dynamo=True,
        opset_version=opset,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=(axes,),
        verbose=False,
    )
    return onnx.load(path)


def run_onnx(model: Any, x: Any) -> Any:
    """One single-threaded ONNX Runtime run of an in-memory model on its ``input``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


# SegNet as learners write it: functional unpooling WITHOUT output_size, so it works only at multiples of 32.
TEXTBOOK_SEGNET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class TextbookSegNet(nn.Module):
        def __init__(self, num_classes=4, in_channels=3):
            super().__init__()
            enc = [(in_channels, 8), (8, 8), (8, 12), (12, 12), (12, 16)]
            dec = [(16, 12), (12, 12), (12, 8), (8, 8), (8, 8)]
            conv = lambda a, b: nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())
            self.enc = nn.ModuleList(conv(a, b) for a, b in enc)
            self.dec = nn.ModuleList(conv(a, b) for a, b in dec)
            self.classifier = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):
            indices = []
            for stage in self.enc:
                x, i = F.max_pool2d(stage(x), 2, 2, return_indices=True)
                indices.append(i)
            for stage, i in zip(self.dec, reversed(indices)):
                x = stage(F.max_unpool2d(x, i, 2, 2))
            return self.classifier(x)

    def build(num_classes=4, in_channels=3):
        return TextbookSegNet(num_classes, in_channels)
    """
)

# A U-Net without size matching: four 2x downsamplings whose skips must line up (multiples of 16).
STRICT_UNET = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU())

    class StrictUNet(nn.Module):
        def __init__(self, num_classes=3, in_channels=3):
            super().__init__()
            w = [8, 8, 12, 12, 16]
            self.down = nn.ModuleList([block(in_channels, w[0])] + [block(w[i], w[i + 1]) for i in range(4)])
            self.up = nn.ModuleList(nn.ConvTranspose2d(w[i + 1], w[i], 2, 2) for i in range(4))
            self.fuse = nn.ModuleList(block(2 * w[i], w[i]) for i in range(4))
            self.head = nn.Conv2d(w[0], num_classes, 1)

        def forward(self, x):
            skips = []
            for i, stage in enumerate(self.down):
                x = stage(x if i == 0 else F.max_pool2d(x, 2))
                skips.append(x)
            for i in reversed(range(4)):
                x = self.fuse[i](torch.cat([self.up[i](x), skips[i]], dim=1))
            return self.head(x)
    """
)

# A model that checks its input like many library models do, and raises on anything else.
DIVISIBLE_BY_32 = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Checked(nn.Module):
        def __init__(self, num_classes=2):
            super().__init__()
            self.encode = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                        nn.Conv2d(8, 8, 3, stride=8, padding=1), nn.ReLU())
            self.head = nn.Conv2d(8, num_classes, 1)

        def forward(self, x):
            h, w = x.shape[-2:]
            if h % 32 or w % 32:
                raise RuntimeError(
                    f"Wrong input shape height={h}, width={w}. Expected image height and width divisible by 32."
                )
            return F.interpolate(self.head(self.encode(x)), size=(h, w), mode="bilinear", align_corners=False)
    """
)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class TinySegNet(nn.Module):
    """One max-pool/unpool stage with a pyramid-pooling context (bins 1 and 3) in between.

    It calls the export rewrites' plain-PyTorch functions itself, so its ONNX has the graph segdeploy's
    export writes without depending on that pipeline.
    """

    def __init__(self, width: int = 16, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = conv_bn_relu(3, width)
        self.middle = conv_bn_relu(width, 2 * width)
        self.context = nn.Conv2d(6 * width, width, 1)
        self.decoder = nn.Sequential(conv_bn_relu(width, width), nn.Conv2d(width, num_classes, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        y = self.middle(F.max_pool2d(skip, 2, 2))
        size = y.shape[-2:]
        pooled = [
            F.interpolate(adaptive_avg_pool2d_exact(y, [bins, bins]), size=size, mode="bilinear", align_corners=False)
            for bins in (1, 3)
        ]
        y = self.context(torch.cat([y, *pooled], dim=1))
        return self.decoder(unpool_first_max(skip, y, 2, list(skip.shape[-2:])))


# --------------------------------------------------------------------------- tiny ONNX files for the TensorRT tests
def write_onnx(
    path: Path, *, fp16: bool = False, dims=("N", 3, "H", "W"), metadata: dict[str, str] | None = None
) -> Path:
    """A tiny 1x1-conv model; with fp16 its weight is FLOAT16 behind a Cast (float32 I/O like segdeploy's)."""
    import onnx
    from onnx import TensorProto, helper

    weight_type = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    weight = helper.make_tensor("w", weight_type, [2, 3, 1, 1], [0.5] * 6)
    nodes = []
    if fp16:
        nodes.append(helper.make_node("Cast", ["input"], ["x16"], to=TensorProto.FLOAT16))
        nodes.append(helper.make_node("Conv", ["x16", "w"], ["y16"]))
        nodes.append(helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT))
    else:
        nodes.append(helper.make_node("Conv", ["input", "w"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    meta = {"trace_shape": "2x3x64x96", "in_channels": "3", "min_size": "32"} if metadata is None else metadata
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def write_qdq_onnx(path: Path, *, fp16: bool = False, metadata: dict[str, str] | None = None) -> Path:
    """A tiny explicitly quantized (Q/DQ) 1x1-conv model, float32 I/O.

    FP32 elsewhere: ONNX Runtime's ``quantize_static`` (QDQ, symmetric int8, per-channel weights) on
    :func:`write_onnx`'s model. FP16 elsewhere: built by hand at opset 19 (FP16 scales), Cast at both ends.
    """
    import onnx
    from onnx import TensorProto, helper

    meta = {"trace_shape": "2x3x64x96", "in_channels": "3", "min_size": "32"} if metadata is None else metadata
    if fp16:
        half = TensorProto.FLOAT16
        nodes = [
            helper.make_node("Cast", ["input"], ["x16"], to=half),
            helper.make_node("QuantizeLinear", ["x16", "x_scale", "x_zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xdq"]),
            helper.make_node("DequantizeLinear", ["wq", "w_scale", "w_zero"], ["wdq"], axis=0),
            helper.make_node("Conv", ["xdq", "wdq"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["logits"], to=TensorProto.FLOAT),
        ]
        initializers = [
            helper.make_tensor("x_scale", half, [], [0.05]),
            helper.make_tensor("x_zero", TensorProto.INT8, [], [0]),
            helper.make_tensor("wq", TensorProto.INT8, [2, 3, 1, 1], [127, -64, 32, 5, 100, -127]),
            helper.make_tensor("w_scale", half, [2], [0.004, 0.008]),
            helper.make_tensor("w_zero", TensorProto.INT8, [2], [0, 0]),
        ]
        graph = helper.make_graph(
            nodes,
            "tiny_qdq_fp16",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
            initializer=initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        model.ir_version = 9
    else:
        import numpy as np
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

        class Batches(CalibrationDataReader):
            def __init__(self) -> None:
                rng = np.random.default_rng(0)
                self.batches = iter([{"input": rng.standard_normal((1, 3, 8, 8), dtype=np.float32)} for _ in range(2)])

            def get_next(self):
                return next(self.batches, None)

        float_path = write_onnx(path.with_name(path.stem + ".float.onnx"), metadata={})
        quantize_static(
            str(float_path),
            str(path),
            Batches(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv"],
            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
        )
        float_path.unlink()
        model = onnx.load(str(path))
        del model.metadata_props[:]
    helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path
