"""VGG16 backbone (torchvision layout), FCN-8s and SegNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segdeploy.errors import CheckpointError
from segdeploy.models._registry import registered
from segdeploy.models.backbones.vgg import VGG, load_backbone_weights
from segdeploy.models.fcn import FCN8s
from segdeploy.models.segnet import SegNet, pool_with_indices, unpool

# Facts about torchvision 0.2x's vgg16 / vgg16_bn (torchvision/models/vgg.py, configuration "D"):
# conv (in, out) per layer and where the convs and BatchNorms sit in `features`.
TORCHVISION_CONV_CHANNELS = [
    (3, 64), (64, 64),
    (64, 128), (128, 128),
    (128, 256), (256, 256), (256, 256),
    (256, 512), (512, 512), (512, 512),
    (512, 512), (512, 512), (512, 512),
]  # fmt: skip
VGG16_CONV_INDICES = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
VGG16_BN_CONV_INDICES = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]
VGG16_FEATURE_PARAMS = 14_714_688
VGG16_BN_FEATURE_PARAMS = 14_723_136  # + 2 * (64*2 + 128*2 + 256*3 + 512*6) BatchNorm affine parameters
# torchvision's classifier: Linear(512*7*7, 4096), ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout, Linear(4096, 1000)
TORCHVISION_CLASSIFIER_SHAPES = {
    "classifier.0.weight": (4096, 25088),
    "classifier.0.bias": (4096,),
    "classifier.3.weight": (4096, 4096),
    "classifier.3.bias": (4096,),
    "classifier.6.weight": (1000, 4096),
    "classifier.6.bias": (1000,),
}


def torchvision_feature_shapes(batch_norm: bool) -> dict[str, tuple[int, ...]]:
    indices = VGG16_BN_CONV_INDICES if batch_norm else VGG16_CONV_INDICES
    shapes: dict[str, tuple[int, ...]] = {}
    for index, (cin, cout) in zip(indices, TORCHVISION_CONV_CHANNELS):
        shapes[f"features.{index}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{index}.bias"] = (cout,)
        if batch_norm:
            bn = f"features.{index + 1}"
            shapes.update({f"{bn}.{name}": (cout,) for name in ("weight", "bias", "running_mean", "running_var")})
            shapes[f"{bn}.num_batches_tracked"] = ()
    return shapes


def small(builder, **kwargs):
    (info,) = [info for info in registered().values() if info.builder is builder]
    config = {**info.test_config, **kwargs}
    return builder(**config).eval()


@pytest.mark.parametrize("batch_norm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_backbone_state_dict_matches_torchvision_names_and_shapes(batch_norm):
    with torch.device("meta"):
        backbone = VGG(batch_norm=batch_norm)
    shapes = {k: tuple(v.shape) for k, v in backbone.state_dict().items()}
    assert shapes == torchvision_feature_shapes(batch_norm)
    expected = VGG16_BN_FEATURE_PARAMS if batch_norm else VGG16_FEATURE_PARAMS
    assert sum(p.numel() for p in backbone.parameters()) == expected


def test_backbone_stages_report_their_channels_and_strides():
    backbone = VGG(width_mult=0.125).eval()
    stages = backbone.forward_stages(torch.randn(1, 3, 64, 96))
    assert [s.shape[1] for s in stages] == backbone.stage_channels == [8, 16, 32, 64, 64]
    assert [tuple(s.shape[-2:]) for s in stages] == [(32, 48), (16, 24), (8, 12), (4, 6), (2, 3)]


def test_output_stride_8_keeps_pool4_and_pool5_at_stride_8_and_dilates_conv5():
    backbone = VGG(width_mult=0.125, output_stride=8).eval()
    stages = backbone.forward_stages(torch.randn(1, 3, 64, 96))
    assert [tuple(s.shape[-2:]) for s in stages] == [(32, 48), (16, 24), (8, 12), (8, 12), (8, 12)]
    start, pool_index = backbone.stage_layer_ranges[4]
    conv5 = [m for m in backbone.features[start:pool_index] if isinstance(m, torch.nn.Conv2d)]
    assert [(c.dilation, c.padding) for c in conv5] == [((2, 2), (2, 2))] * 3


def test_width_mult_never_goes_below_8_channels():
    assert VGG(width_mult=0.01).stage_channels == [8] * 5


@pytest.mark.parametrize(("builder", "num_classes", "millions"), [(FCN8s, 21, 134.5), (SegNet, 12, 29.4)])
def test_default_config_has_the_published_parameter_count(builder, num_classes, millions):
    with torch.device("meta"):
        model = builder(num_classes=num_classes)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 1) == millions


@pytest.mark.parametrize("builder", [FCN8s, SegNet])
@pytest.mark.parametrize("size", [(33, 47), (97, 131)])
def test_logits_cover_odd_sized_batches_exactly(builder, size):
    model = small(builder, num_classes=5, in_channels=1)
    with torch.no_grad():
        logits = model(torch.randn(2, 1, *size))
    assert logits.shape == (2, 5, *size)
    assert torch.isfinite(logits).all()


def test_registry_declares_what_export_needs():
    assert registered()["fcn8s"].rewrites == ()
    assert registered()["segnet"].rewrites == ("max_unpool",)
    assert registered()["segnet"].index_unpooling and not registered()["fcn8s"].index_unpooling


def test_fcn_upsamplers_start_as_bilinear_interpolation():
    model = FCN8s(num_classes=2, width_mult=0.0625)
    constant = torch.full((1, 2, 5, 5), 3.0)
    with torch.no_grad():
        up = model.upscore8(constant)
    # Away from the borders every output pixel is a convex combination of equal inputs.
    assert torch.allclose(up[..., 8:-8, 8:-8], torch.full_like(up[..., 8:-8, 8:-8], 3.0))
    assert model.upscore8.weight[0, 1].abs().sum() == 0  # classes do not mix


def test_unpool_puts_each_value_at_the_first_maximum_of_its_window():
    x = torch.tensor(
        [
            [1.0, 5.0, 0.0, 0.0, 9.0],
            [2.0, 3.0, 0.0, 0.0, 9.0],
            [7.0, 7.0, 4.0, 1.0, 9.0],
        ]
    ).reshape(1, 1, 3, 5)
    pooled, indices = pool_with_indices(x)
    assert pooled.flatten().tolist() == [5.0, 0.0]
    restored = unpool(pooled * 10, indices, x.shape)
    # Window 1 has its max at (0, 1); window 2 is all zeros, so its first slot (0, 2) wins the tie.
    # Row 2 and column 4 lie outside every 2x2 window and stay zero.
    expected = torch.zeros(1, 1, 3, 5)
    expected[0, 0, 0, 1] = 50.0
    assert indices.flatten().tolist() == [1, 2]
    assert torch.equal(restored, expected)


def test_segnet_decoder_unpools_each_stage_where_its_encoder_pooled():
    model = small(SegNet, num_classes=3)
    features = model.backbone.features
    encoder_maps: list[torch.Tensor] = []
    decoder_inputs: list[torch.Tensor] = []
    hooks = [features[end - 1].register_forward_hook(lambda m, i, o: encoder_maps.append(o.clone()))
             for _, end in model.backbone.stage_layer_ranges]  # fmt: skip
    hooks += [stage.register_forward_pre_hook(lambda m, i: decoder_inputs.append(i[0])) for stage in model.decoder]
    with torch.no_grad():
        model(torch.randn(1, 3, 67, 45))
    for hook in hooks:
        hook.remove()
    for encoder_map, unpooled in zip(encoder_maps, reversed(decoder_inputs)):
        assert unpooled.shape == encoder_map.shape
        n, c, h, w = encoder_map.shape
        hp, wp = h // 2, w // 2
        # torch.argmax returns the first maximum; slot k of a window is row-major (0,0), (0,1), (1,0), (1,1).
        windows = encoder_map[:, :, : 2 * hp, : 2 * wp].reshape(n, c, hp, 2, wp, 2).permute(0, 1, 2, 4, 3, 5)
        first_max = windows.reshape(n, c, hp, wp, 4).argmax(-1)
        allowed = F.one_hot(first_max, 4).reshape(n, c, hp, wp, 2, 2).permute(0, 1, 2, 4, 3, 5)
        allowed = allowed.reshape(n, c, 2 * hp, 2 * wp).bool()
        inside = unpooled[:, :, : 2 * hp, : 2 * wp]
        assert (inside[~allowed] == 0).all()
        assert (inside[allowed] != 0).any()
        assert (unpooled[:, :, 2 * hp :, :] == 0).all() and (unpooled[:, :, :, 2 * wp :] == 0).all()


def fake_torchvision_checkpoint(backbone: VGG, fc_width: int) -> dict[str, torch.Tensor]:
    """A state dict laid out like torchvision's vgg16(_bn), at the backbone's widths."""
    state = {k: torch.randn(v.shape) if v.is_floating_point() else v.clone() for k, v in backbone.state_dict().items()}
    pooled_features = backbone.out_channels * 7 * 7
    state["classifier.0.weight"] = torch.randn(fc_width, pooled_features)
    state["classifier.0.bias"] = torch.randn(fc_width)
    state["classifier.3.weight"] = torch.randn(fc_width, fc_width)
    state["classifier.3.bias"] = torch.randn(fc_width)
    state["classifier.6.weight"] = torch.randn(1000, fc_width)
    state["classifier.6.bias"] = torch.randn(1000)
    return state


def test_torchvision_classifier_shapes_are_what_fcn_fc6_and_fc7_convert():
    with torch.device("meta"):
        model = FCN8s()
    assert model.fc6.weight.numel() == torch.Size(TORCHVISION_CLASSIFIER_SHAPES["classifier.0.weight"]).numel()
    assert model.fc6.weight.shape[0] == TORCHVISION_CLASSIFIER_SHAPES["classifier.0.weight"][0]
    assert model.fc7.weight.shape[:2] == TORCHVISION_CLASSIFIER_SHAPES["classifier.3.weight"]


def test_load_backbone_weights_loads_features_and_converts_fc6_fc7(tmp_path):
    model = FCN8s(width_mult=0.0625)
    state = fake_torchvision_checkpoint(VGG(width_mult=0.0625), fc_width=model.fc6.out_channels)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)

    loaded = load_backbone_weights(model, path)

    own = model.state_dict()
    assert len(loaded) == 26 + 4
    for key, value in state.items():
        if key.startswith("features."):
            assert torch.equal(own[f"backbone.{key}"], value)
    # fc6 as a 7x7 conv on a 7x7 map computes exactly torchvision's Linear on the flattened map.
    pool5 = torch.randn(1, model.backbone.out_channels, 7, 7)
    with torch.no_grad():
        as_conv = model.fc6(pool5).flatten(1)
        as_linear = F.linear(pool5.flatten(1), state["classifier.0.weight"], state["classifier.0.bias"])
        assert torch.allclose(as_conv, as_linear, atol=1e-4)
        hidden = torch.randn(1, model.fc7.in_channels, 1, 1)
        expected = F.linear(hidden.flatten(1), state["classifier.3.weight"], state["classifier.3.bias"])
        assert torch.allclose(model.fc7(hidden).flatten(1), expected, atol=1e-5)


def test_load_backbone_weights_fills_segnet_encoder_from_vgg16_bn(tmp_path):
    model = SegNet(width_mult=0.125)
    state = fake_torchvision_checkpoint(VGG(batch_norm=True, width_mult=0.125), fc_width=64)
    del state["features.1.num_batches_tracked"]  # old torchvision files predate it
    path = tmp_path / "vgg16_bn.pth"
    torch.save(state, path)

    load_backbone_weights(model, path)

    for key, value in model.backbone.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key])


def test_vgg16_weights_without_batchnorm_are_refused_by_segnet(tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(fake_torchvision_checkpoint(VGG(width_mult=0.125), fc_width=64), path)
    with pytest.raises(CheckpointError, match="does not fit the vgg16_bn backbone.*missing keys: features.1.weight"):
        load_backbone_weights(SegNet(width_mult=0.125), path)
