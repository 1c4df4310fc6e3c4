"""ResNet backbone, PSPNet and the DeepLab family: structure facts from the papers and torchvision.

The generic tests over every registered model (shapes, determinism, state
dict round trip) live in the model-zoo tests; these check what is specific to
these architectures. Full-size models are built on the meta device (no memory,
no compute); forward passes use the registry's small test configurations.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segdeploy.errors import CheckpointError, UserInputError
from segdeploy.models import create_model, model_info
from segdeploy.models.backbones.resnet import ResNet, load_backbone_weights
from segdeploy.models.deeplab import ImagePooling, SeparableConvBNReLU

RESNET_FAMILY = ("pspnet", "deeplabv2", "deeplabv3", "deeplabv3plus")

# torchvision: resnet50 25,557,032 and resnet101 44,549,160 parameters, of which fc is 2048*1000+1000.
TORCHVISION_FC = 2048 * 1000 + 1000
RESNET50_PARAMS = 25_557_032 - TORCHVISION_FC  # 23,508,032
RESNET101_PARAMS = 44_549_160 - TORCHVISION_FC  # 42,500,160


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def small(name: str, **overrides) -> nn.Module:
    return create_model(name, **{**model_info(name).test_config, **overrides})


def on_meta(build, *args, **kwargs):
    with torch.device("meta"):
        return build(*args, **kwargs)


@pytest.mark.parametrize(("arch", "expected"), [("resnet50", RESNET50_PARAMS), ("resnet101", RESNET101_PARAMS)])
def test_resnet_has_torchvision_parameter_count_without_fc(arch, expected):
    assert n_params(on_meta(ResNet, arch)) == expected


def test_resnet_uses_torchvision_parameter_names_and_shapes():
    state = on_meta(ResNet, "resnet101").state_dict()
    expected_shapes = {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1),
        "layer1.0.downsample.1.weight": (256,),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer3.22.bn3.weight": (1024,),
        "layer4.0.downsample.0.weight": (2048, 1024, 1, 1),
        "layer4.2.conv3.weight": (2048, 512, 1, 1),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    assert "layer3.23.conv1.weight" not in state
    assert "layer1.1.downsample.0.weight" not in state
    assert not any(k.startswith(("fc.", "avgpool")) for k in state)


@pytest.mark.parametrize(("output_stride", "layer4_size"), [(8, 8), (16, 4), (32, 2)])
def test_output_stride_sets_feature_map_sizes_at_64(output_stride, layer4_size):
    backbone = on_meta(ResNet, "resnet50", output_stride=output_stride)
    features = backbone(torch.zeros(1, 3, 64, 64, device="meta"))
    assert tuple(features["layer1"].shape) == (1, 256, 16, 16)
    assert tuple(features["layer4"].shape) == (1, 2048, layer4_size, layer4_size)
    assert tuple(features["layer3"].shape[-2:]) == (max(layer4_size, 64 // 16),) * 2


def test_dilation_replaces_stride_like_torchvision():
    backbone = on_meta(ResNet, "resnet50", output_stride=8)
    # The first block of a dilated layer keeps the previous dilation, later blocks take the new one.
    assert [b.conv2.dilation[0] for b in backbone.layer3] == [1, 2, 2, 2, 2, 2]
    assert [b.conv2.dilation[0] for b in backbone.layer4] == [2, 4, 4]
    assert backbone.layer3[0].conv2.stride == (1, 1)
    assert backbone.layer3[0].downsample[0].stride == (1, 1)
    assert backbone.layer2[0].conv2.stride == (2, 2)


@pytest.mark.parametrize(("output_stride", "rates"), [(16, [2, 4, 8]), (8, [4, 8, 16])])
def test_multi_grid_multiplies_layer4_dilation(output_stride, rates):
    backbone = on_meta(ResNet, "resnet101", output_stride=output_stride, multi_grid=(1, 2, 4))
    assert [b.conv2.dilation[0] for b in backbone.layer4] == rates
    assert [b.conv2.padding[0] for b in backbone.layer4] == rates


def test_width_mult_scales_channels_with_a_floor_of_8():
    backbone = ResNet("resnet50", width_mult=0.0625, in_channels=1)
    assert backbone.conv1.weight.shape == (8, 1, 7, 7)
    assert backbone.channels == {"layer1": 32, "layer2": 32, "layer3": 64, "layer4": 128}


def test_torchvision_checkpoint_with_fc_loads_into_backbone(tmp_path):
    source = ResNet("resnet50", width_mult=0.125)
    for tensor in source.state_dict().values():
        if tensor.is_floating_point():
            tensor.copy_(torch.rand_like(tensor) + 0.5)
    state = dict(source.state_dict())
    state["fc.weight"] = torch.randn(1000, source.channels["layer4"])
    state["fc.bias"] = torch.randn(1000)
    # Old torchvision files predate num_batches_tracked.
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)

    model = small("deeplabv3", backbone="resnet50")
    loaded = load_backbone_weights(model, path)

    assert loaded and all(k.startswith("backbone.") for k in loaded)
    assert not any("fc." in k for k in loaded)
    for key, value in source.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(model.backbone.state_dict()[key], value, rtol=0, atol=0)


def test_backbone_weights_option_loads_the_checkpoint(tmp_path):
    source = ResNet("resnet50", width_mult=0.125)
    torch.nn.init.normal_(source.conv1.weight)
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = small("pspnet", backbone_weights=str(path))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)


def test_checkpoint_of_another_width_names_the_conflict(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(ResNet("resnet50", width_mult=0.25).state_dict(), path)
    with pytest.raises(CheckpointError, match="shape conflicts: conv1.weight"):
        load_backbone_weights(ResNet("resnet50", width_mult=0.125), path)


def test_resnet101_checkpoint_into_resnet50_names_the_extra_blocks(tmp_path):
    path = tmp_path / "r101.pth"
    torch.save(ResNet("resnet101", width_mult=0.125).state_dict(), path)
    with pytest.raises(CheckpointError, match="unexpected keys: layer3.6"):
        load_backbone_weights(ResNet("resnet50", width_mult=0.125), path)


def test_pspnet_pyramid_pools_to_bins_1_2_3_6_with_a_quarter_of_the_channels():
    model = on_meta(create_model, "pspnet")
    stages = model.ppm.stages
    assert [stage[0].output_size for stage in stages] == [1, 2, 3, 6]
    assert all(stage[1].out_channels == 2048 // 4 for stage in stages)
    assert model.head[0].in_channels == 2048 + 4 * 512
    assert model.backbone.output_stride == 8

    pooled_sizes = []
    small_model = small("pspnet")
    for stage in small_model.ppm.stages:
        stage[0].register_forward_hook(lambda mod, args, out: pooled_sizes.append(tuple(out.shape[-2:])))
    small_model(torch.randn(1, 3, 97, 131))
    assert pooled_sizes == [(1, 1), (2, 2), (3, 3), (6, 6)]


def test_pspnet_aux_head_runs_only_in_training():
    model = small("pspnet")
    calls = []
    model.aux_head.register_forward_hook(lambda *args: calls.append(1))
    x = torch.randn(2, 3, 33, 47)

    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 21, 33, 47)
    assert calls == []

    train_out = model.train()(x)
    assert set(train_out) == {"out", "aux"}
    assert train_out["out"].shape == train_out["aux"].shape == (2, 21, 33, 47)
    assert calls == [1]


def test_deeplabv1_has_largefov_fc6_and_five_multiscale_classifiers():
    model = on_meta(create_model, "deeplabv1")
    assert (model.fc6.out_channels, model.fc6.kernel_size, model.fc6.dilation) == (1024, (3, 3), (12, 12))
    assert [branch[0].stride[0] for branch in model.multi_scale] == [8, 4, 2, 1, 1]
    assert [branch[-1].out_channels for branch in model.multi_scale] == [21] * 5
    plain = on_meta(create_model, "deeplabv1", multi_scale=False)
    assert len(plain.multi_scale) == 0


def test_deeplabv2_sums_four_atrous_score_branches():
    meta = on_meta(create_model, "deeplabv2")
    assert [conv.dilation[0] for conv in meta.aspp] == [6, 12, 18, 24]
    # The score convs add 4 x (2048 * 21 * 3 * 3 + 21) to ResNet-101.
    assert n_params(meta) == RESNET101_PARAMS + 4 * (2048 * 21 * 9 + 21)

    model = small("deeplabv2")
    x = torch.randn(1, 3, 40, 56)
    features = model.backbone(x)["layer4"]
    summed = sum(branch(features) for branch in model.aspp)
    expected = nn.functional.interpolate(summed, size=(40, 56), mode="bilinear", align_corners=False)
    torch.testing.assert_close(model(x), expected)


def test_deeplabv3_aspp_concatenates_five_branches_into_a_1x1_projection():
    model = on_meta(create_model, "deeplabv3")
    assert len(model.aspp.branches) == 5
    assert isinstance(model.aspp.branches[-1], ImagePooling)
    assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == [6, 12, 18]
    projection = model.aspp.project[0][0]
    assert (projection.in_channels, projection.out_channels, projection.kernel_size) == (5 * 256, 256, (1, 1))
    assert model.backbone.output_stride == 16
    assert [b.conv2.dilation[0] for b in model.backbone.layer4] == [2, 4, 8]


def test_aspp_rates_double_at_output_stride_8():
    model = on_meta(create_model, "deeplabv3", output_stride=8)
    assert [b[0].dilation[0] for b in model.aspp.branches[1:4]] == [12, 24, 36]


def test_deeplabv3plus_uses_separable_aspp_and_a_48_channel_low_level_decoder():
    model = on_meta(create_model, "deeplabv3plus")
    atrous = model.aspp.branches[1:4]
    assert all(isinstance(b, SeparableConvBNReLU) for b in atrous)
    assert [b.depthwise[0].dilation[0] for b in atrous] == [6, 12, 18]
    assert all(b.depthwise[0].groups == 2048 for b in atrous)
    assert model.low_level[0].in_channels == 256 and model.low_level[0].out_channels == 48
    assert model.decoder[0].depthwise[0].in_channels == 256 + 48
    assert all(isinstance(b, SeparableConvBNReLU) for b in model.decoder)


def test_deeplabv3plus_decoder_works_at_stride_4():
    model = small("deeplabv3plus")
    seen = []
    model.decoder.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape[-2:])))
    model(torch.randn(1, 3, 97, 131))
    # layer1 is at stride 4: ceil(ceil(97 / 2) / 2) x ceil(ceil(131 / 2) / 2).
    assert seen == [(25, 33)]


@pytest.mark.parametrize("name", ("deeplabv3", "deeplabv3plus"))
def test_deeplabv3_trains_at_batch_1(name):
    model = small(name).train()
    model(torch.randn(1, 3, 48, 48)).sum().backward()
    assert model.aspp.branches[-1].conv.weight.grad is not None


def test_image_pooling_normalises_like_bn_on_the_pooled_values():
    torch.manual_seed(0)
    branch = ImagePooling(6, 4)
    x = torch.randn(3, 6, 5, 7)
    reference_bn = nn.BatchNorm2d(4)
    reference_bn.load_state_dict(branch.bn.state_dict())

    out = branch.train()(x)
    pooled = branch.conv(x.mean((2, 3), keepdim=True))
    expected = torch.relu(reference_bn.train()(pooled)).expand(-1, -1, 5, 7)
    torch.testing.assert_close(out, expected)
    # running_var differs only by Bessel's correction (N * H * W vs N values), so only the mean is compared.
    torch.testing.assert_close(branch.bn.running_mean, reference_bn.running_mean)


def test_image_pooling_matches_upsampled_pooling_in_eval():
    branch = ImagePooling(6, 4).eval()
    nn.init.normal_(branch.bn.running_mean)
    nn.init.uniform_(branch.bn.running_var, 0.5, 2.0)
    x = torch.randn(2, 6, 9, 11)
    pooled = torch.relu(branch.bn(branch.conv(x.mean((2, 3), keepdim=True))))
    expected = nn.functional.interpolate(pooled, size=(9, 11), mode="bilinear", align_corners=False)
    torch.testing.assert_close(branch(x), expected)


@pytest.mark.parametrize("name", RESNET_FAMILY)
def test_unknown_backbone_lists_the_choices(name):
    with pytest.raises(UserInputError, match="resnet50, resnet101"):
        create_model(name, backbone="resnet18")


def test_deeplabv3_rejects_output_stride_32():
    with pytest.raises(UserInputError, match="output_stride must be 8 or 16"):
        create_model("deeplabv3", output_stride=32)
