"""The model zoo: every registered model at small width, plus the published sizes of the full ones.

Each model is built once per test module from its ``test_config`` with
non-default ``num_classes``/``in_channels``, so the shape tests also show that
both are respected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import ZOO
from torch import nn

import segdeploy
from segdeploy.checkpoints import load_weights
from segdeploy.errors import UserInputError

NUM_CLASSES = 5
IN_CHANNELS = 2
ODD_SHAPE = (2, IN_CHANNELS, 97, 131)


def _build_small(name: str, seed: int) -> nn.Module:
    """The test-config model with non-default classes/channels and BatchNorm statistics that are not 0/1.

    Random running statistics make the round-trip test cover buffers, not only parameters.
    """
    torch.manual_seed(seed)
    config = segdeploy.model_info(name).test_config
    model = segdeploy.create_model(name, num_classes=NUM_CLASSES, in_channels=IN_CHANNELS, **config)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model


class Built:
    """One small model and its output on a fixed odd-sized batch, computed once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model = _build_small(name, seed=0)
        self.input = torch.randn(ODD_SHAPE, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            self.output = self.model(self.input)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These models are many small convolutions: on a busy 2-core machine a second
    # OpenMP thread waits at every op's barrier and one forward became 50x slower (measured).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module", params=ZOO)
def built(request: pytest.FixtureRequest) -> Iterator[Built]:
    yield Built(request.param)


def test_registry_lists_exactly_the_thirteen_architectures():
    assert sorted(segdeploy.list_models()) == sorted(ZOO)


def test_unknown_pattern_lists_nothing():
    assert segdeploy.list_models("no-such-model*") == []


def test_unknown_model_lists_known_names():
    with pytest.raises(UserInputError) as caught:
        segdeploy.create_model("nope")
    message = str(caught.value)
    assert "'nope'" in message
    assert all(name in message for name in ZOO)


def test_bad_option_is_a_user_error():
    with pytest.raises(UserInputError, match="unet"):
        segdeploy.create_model("unet", no_such_option=3)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"width_mult": "abc"}, "bad option width_mult='abc' for model 'unet': expected a number"),
        ({"batch_norm": 1}, "bad option batch_norm=1 for model 'unet': expected true or false"),
        ({"backbone_weights": "vgg16.pth"}, "unknown option 'backbone_weights' for model 'unet'"),
    ],
)
def test_options_are_checked_against_the_models_signature(config: dict, message: str):
    with pytest.raises(UserInputError) as caught:
        segdeploy.create_model("unet", **config)
    assert message in str(caught.value)


def test_option_values_of_every_declared_type_are_accepted():
    model = segdeploy.create_model("deeplabv3", width_mult=0.125, backbone="resnet50", multi_grid=None, dropout=0)
    assert model.backbone is not None
    with pytest.raises(UserInputError, match="expected a list of integers or null"):
        segdeploy.create_model("deeplabv3", multi_grid=[1, "2", 4])


def test_a_bug_inside_a_model_is_not_reported_as_a_bad_option(monkeypatch: pytest.MonkeyPatch):
    from segdeploy.models import ModelInfo
    from segdeploy.models._registry import registered

    class Buggy(nn.Module):
        def __init__(self, *, num_classes: int = 21, in_channels: int = 3, width: int = 8) -> None:
            super().__init__()
            nn.Conv2d(in_channels, width, 3, padding="sideways")  # a bug in the model's own code

    monkeypatch.setitem(registered(), "buggy", ModelInfo(name="buggy", paper="-", builder=Buggy))
    assert segdeploy.model_info("buggy").options() == {"width": 8}
    with pytest.raises(ValueError, match="sideways"):
        segdeploy.create_model("buggy", width=4)


def test_model_is_in_eval_mode(built: Built):
    assert not any(module.training for module in built.model.modules())


def test_output_shape_at_odd_size_batch_2(built: Built):
    assert isinstance(built.output, torch.Tensor)
    assert tuple(built.output.shape) == (2, NUM_CLASSES, 97, 131)
    assert torch.isfinite(built.output).all()


@pytest.mark.parametrize("height, width", [(32, 32), (33, 47)])
def test_output_shape_at_small_sizes(built: Built, height: int, width: int):
    with torch.no_grad():
        out = built.model(torch.randn(1, IN_CHANNELS, height, width))
    assert tuple(out.shape) == (1, NUM_CLASSES, height, width)


def test_eval_forward_is_deterministic(built: Built):
    with torch.no_grad():
        again = built.model(built.input)
    assert torch.equal(again, built.output)


def test_state_dict_round_trip_restores_outputs(built: Built, tmp_path: Path):
    path = tmp_path / f"{built.name}.pt"
    torch.save(built.model.state_dict(), path)
    fresh = _build_small(built.name, seed=123)
    with torch.no_grad():
        before = fresh(built.input)
    assert not torch.equal(before, built.output), "a differently seeded model should differ before loading"
    load_weights(fresh, path)
    with torch.no_grad():
        after = fresh(built.input)
    assert torch.equal(after, built.output)


@pytest.mark.parametrize("name", ZOO)
def test_builder_respects_num_classes_and_in_channels(name: str):
    config = segdeploy.model_info(name).test_config
    model = segdeploy.create_model(name, num_classes=3, in_channels=1, **config)
    with torch.no_grad():
        out = model(torch.randn(1, 1, 32, 32))
    assert tuple(out.shape) == (1, 3, 32, 32)
    with pytest.raises(RuntimeError):
        model(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ZOO)
def test_default_config_builds_and_runs_on_meta_device(name: str):
    with torch.device("meta"):
        model = segdeploy.create_model(name, num_classes=4)
        out = model(torch.zeros(1, 3, 64, 64))
    assert out.device.type == "meta"
    assert tuple(out.shape) == (1, 4, 64, 64)


# Tensor count and digest of the sorted "name:shape" lines of each full-size 21-class state dict. Saved
# checkpoints load by these names: a refactor that renames or reshapes a tensor breaks them and this test.
STATE_DICT_LAYOUT = {
    "fcn8s": (39, "0eb42d9e4a66e435"),
    "unet": (118, "3116079fc7ca6c30"),
    "unetpp": (202, "049088642154b9e3"),
    "segnet": (177, "842ede8d55dd9ce0"),
    "pspnet": (358, "3085ea2f8c2246be"),
    "deeplabv1": (62, "f8aeafc35c7c5e15"),
    "deeplabv2": (632, "9b279308291d192d"),
    "deeplabv3": (662, "da527e1f084f4702"),
    "deeplabv3plus": (710, "570082e69716fa9b"),
    "u2net": (798, "fb59a8e6c218d073"),
    "glore": (347, "0beb33d656526118"),
    "gcu": (366, "2f85971e426aa04e"),
    "ginet": (376, "b6ce8f8c1149d5ac"),
}


@pytest.mark.parametrize("name", ZOO)
def test_state_dict_names_and_shapes_stay_those_saved_checkpoints_have(name: str):
    with torch.device("meta"):
        state = segdeploy.create_model(name).state_dict()
    lines = "\n".join(f"{key}:{list(state[key].shape)}" for key in sorted(state))
    assert (len(state), hashlib.sha256(lines.encode()).hexdigest()[:16]) == STATE_DICT_LAYOUT[name]


def _count_on_meta(name: str, **kwargs: int) -> int:
    with torch.device("meta"):
        model = segdeploy.create_model(name, **kwargs)
    return sum(p.numel() for p in model.parameters())


# The published sizes are given to 0.1M, so a faithful count must round to them:
# the tolerance is half the last published digit (about 0.17% of SegNet's size).
@pytest.mark.parametrize(
    "name, kwargs, published_millions",
    [
        ("segnet", {"num_classes": 12}, 29.4),
        ("fcn8s", {"num_classes": 21}, 134.5),
        ("unet", {"num_classes": 2, "in_channels": 1}, 31.0),
        ("u2net", {"num_classes": 1}, 44.0),
    ],
)
def test_default_parameter_count_rounds_to_published_size(name: str, kwargs: dict, published_millions: float):
    count = _count_on_meta(name, **kwargs)
    assert abs(count / 1e6 - published_millions) <= 0.05, f"{name}: {count:,} parameters"


# Exact counts of the reference implementations these models follow: the widely used
# padded U-Net with BatchNorm and transposed convolutions (3 in, 2 classes), the
# U²-Net authors' code, and UNet++ without BatchNorm (the paper's 9.04M, Table 2 of DLMIA 2018).
@pytest.mark.parametrize(
    "name, kwargs, reference",
    [
        ("unet", {"num_classes": 2, "in_channels": 3}, 31_037_698),
        ("u2net", {"num_classes": 1, "in_channels": 3}, 44_009_869),
        ("unetpp", {"num_classes": 1, "in_channels": 1, "batch_norm": False}, 9_041_601),
    ],
)
def test_parameter_count_matches_reference_implementation(name: str, kwargs: dict, reference: int):
    assert _count_on_meta(name, **kwargs) == reference


def test_unet_without_batch_norm_has_biased_convs_and_no_norm_layers():
    model = segdeploy.create_model("unet", width_mult=0.125, batch_norm=False)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(m.bias is not None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_unetpp_deep_supervision_trains_on_four_heads_and_evaluates_their_average():
    model = segdeploy.create_model("unetpp", num_classes=3, width_mult=0.125, deep_supervision=True)
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        averaged = model(x)
        # Only the top module switches to training, so BatchNorm keeps its running
        # statistics and the heads are comparable with the eval output.
        model.training = True
        heads = model(x)
    assert isinstance(heads, tuple) and len(heads) == 4
    assert all(tuple(h.shape) == (2, 3, 33, 47) for h in heads)
    torch.testing.assert_close(averaged, torch.stack(heads).mean(dim=0))


def test_unetpp_without_deep_supervision_returns_one_tensor_in_training():
    model = segdeploy.create_model("unetpp", num_classes=3, width_mult=0.125).train()
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 3, 32, 32)


def test_u2net_trains_on_fused_and_six_side_outputs_and_evaluates_fused_logits():
    model = segdeploy.create_model("u2net", num_classes=2, width_mult=0.125)
    x = torch.randn(2, 3, 45, 39)
    with torch.no_grad():
        fused = model(x)
        model.training = True  # top module only: BatchNorm stays in eval
        outputs = model(x)
    assert isinstance(fused, torch.Tensor) and tuple(fused.shape) == (2, 2, 45, 39)
    assert len(outputs) == 7
    assert all(tuple(o.shape) == (2, 2, 45, 39) for o in outputs)
    assert torch.equal(outputs[0], fused)
    # logits, not probabilities: the paper's sigmoid belongs to the loss
    assert fused.min() < 0 or fused.max() > 1


def test_u2net_training_step_backpropagates_through_every_side_output():
    model = segdeploy.create_model("u2net", num_classes=1, width_mult=0.125).train()
    outputs = model(torch.randn(2, 3, 32, 32))
    target = torch.rand(2, 1, 32, 32)
    loss = sum(nn.functional.binary_cross_entropy_with_logits(o, target) for o in outputs)
    loss.backward()
    assert all(side.weight.grad is not None and side.weight.grad.abs().sum() > 0 for side in model.sides)
