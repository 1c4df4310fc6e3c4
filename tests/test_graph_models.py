"""GloRe, GCU and GINet: each graph unit does what its paper says, on tiny inputs.

The registry-wide tests (odd sizes, batch 2, determinism, state dict round
trip) cover these models with the others; these check the projections, node
states and reprojections, the word-vector file and the full-size structure
(built on the meta device: no memory, no compute).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from segdeploy.errors import UserInputError
from segdeploy.models import create_model, model_info
from segdeploy.models.gcu import GCU
from segdeploy.models.ginet import GIUnit, semantic_context_loss
from segdeploy.models.glore import GloReUnit
from segdeploy.models.graph import GraphConv

GRAPH_MODELS = ("glore", "gcu", "ginet")
RESNET50_PARAMS = 23_508_032  # torchvision resnet50 without fc
RESNET101_PARAMS = 42_500_160


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def small(name: str, **overrides) -> nn.Module:
    return create_model(name, **{**model_info(name).test_config, **overrides})


def on_meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, **kwargs)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def randomize_norms(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)


# --------------------------------------------------------------------------- GloRe
def test_glore_unit_projects_positions_to_nodes_and_back():
    torch.manual_seed(0)
    unit = GloReUnit(16, 8, num_nodes=5).eval()
    x = torch.randn(2, 16, 7, 9)
    out, proj, v, y = unit(x, return_graph=True)
    assert proj.shape == (2, 5, 63)  # B: nodes x H*W
    assert v.shape == (2, 8, 5)  # V: C' x nodes
    assert y.shape == (2, 8, 7, 9)  # reprojected with the same B
    assert out.shape == x.shape
    state = unit.state(x).flatten(2)
    torch.testing.assert_close(v, state @ unit.proj(x).flatten(2).transpose(1, 2) / 63)
    torch.testing.assert_close(y.flatten(2), unit.gcn(v) @ proj)
    torch.testing.assert_close(out, x + unit.blocker(unit.extend(y)))


def test_glore_node_states_do_not_grow_with_the_input_size():
    # Dividing by H*W: a map tiled twice holds the same positions twice, so V is unchanged.
    torch.manual_seed(0)
    unit = GloReUnit(16, 8, num_nodes=5).eval()
    x = torch.randn(1, 16, 6, 7)
    _, _, v, _ = unit(x, return_graph=True)
    _, _, v_tiled, _ = unit(x.repeat(1, 1, 2, 1), return_graph=True)
    torch.testing.assert_close(v_tiled, v)


def test_glore_graph_convolution_is_node_conv_plus_identity_relu_then_channel_conv():
    torch.manual_seed(0)
    gcn = GraphConv(state_channels=6, num_nodes=4)
    v = torch.randn(3, 6, 4)
    a_g = gcn.node_conv.weight[:, :, 0]  # [nodes, nodes]
    w_g = gcn.channel_conv.weight[:, :, 0]  # [C', C']
    expected = w_g @ torch.relu(v + v @ a_g.t() + gcn.node_conv.bias)
    torch.testing.assert_close(gcn(v), expected)


def test_glore_full_size_head_reduces_to_512_with_128_states_and_64_nodes():
    model = on_meta("glore")
    assert model.backbone.output_stride == 8
    assert (model.reduce[0].in_channels, model.reduce[0].out_channels) == (2048, 512)
    assert model.glore.state.out_channels == 128
    assert model.glore.proj.out_channels == 64
    assert model.glore.extend.out_channels == 512


# --------------------------------------------------------------------------- GCU
def test_gcu_assignment_rows_sum_to_one_and_nodes_are_unit_vectors():
    torch.manual_seed(0)
    unit = GCU(6, 4, num_nodes=3).eval()
    randomize_norms(unit)
    x = torch.randn(2, 6, 5, 7)
    out, q, z, adjacency = unit(x, return_graph=True)
    assert q.shape == (2, 35, 3)  # Q: H*W x nodes
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 35))
    assert z.shape == (2, 3, 6)  # Z: nodes x d
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(2, 3))
    assert adjacency.shape == (2, 3, 3)
    torch.testing.assert_close(adjacency, adjacency.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(adjacency, dim1=1, dim2=2), torch.ones(2, 3))
    assert out.shape == (2, 4, 5, 7)


def test_gcu_projection_follows_the_papers_equations():
    torch.manual_seed(0)
    unit = GCU(5, 3, num_nodes=4).double().eval()
    randomize_norms(unit)
    with torch.no_grad():
        unit.sigma.uniform_(0.5, 2.0)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    out, q, z, adjacency = unit(x, return_graph=True)

    pixels = x.flatten(2).transpose(1, 2)  # [N, L, d]
    residual = (pixels[:, :, None, :] - unit.anchors) / unit.sigma  # [N, L, K, d]
    q_ref = torch.softmax(-0.5 * residual.pow(2).sum(-1), dim=-1)
    z_ref = (q_ref[..., None] * residual).sum(1) / q_ref.sum(1)[..., None]
    z_ref = z_ref / z_ref.norm(dim=-1, keepdim=True)
    a_ref = z_ref @ z_ref.transpose(1, 2)
    nodes = torch.relu(unit.bn((a_ref @ z_ref @ unit.weight.weight.t()).transpose(1, 2)))  # f(A Z W_g)
    out_ref = (q_ref @ nodes.transpose(1, 2)).transpose(1, 2).reshape(2, 3, 3, 4)

    torch.testing.assert_close(q, q_ref)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(adjacency, a_ref)
    torch.testing.assert_close(out, out_ref)


def test_gcu_full_size_concatenates_units_at_2_4_8_32_nodes_with_layer4():
    model = on_meta("gcu")
    assert [unit.anchors.shape[0] for unit in model.gcus] == [2, 4, 8, 32]
    assert all(unit.anchors.shape[1] == 2048 and unit.weight.out_features == 512 for unit in model.gcus)
    assert model.classifier[0].in_channels == 2048 + 4 * 512

    seen = []
    small_model = small("gcu")
    for unit in small_model.gcus:
        unit.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    with torch.no_grad():
        small_model(torch.randn(1, 3, 64, 64))
    features = small_model.backbone.channels["layer4"]
    assert seen == [(1, features // 4, 8, 8)] * 4


def test_gcu_rejects_empty_node_counts():
    with pytest.raises(UserInputError, match="nodes"):
        create_model("gcu", nodes=())


# --------------------------------------------------------------------------- GINet
def test_ginet_semantic_graph_has_one_node_per_class_and_the_unit_keeps_shapes():
    model = small("ginet", num_classes=7).eval()
    randomize_norms(model)
    semantic = model.semantic()
    assert semantic.shape == (7, model.gi.state.out_channels)
    x = torch.randn(2, model.gi.state.in_channels, 5, 6)
    nodes = semantic.t().unsqueeze(0).expand(2, -1, -1)
    out, semantic_out, proj, visual, visual_out = model.gi(x, nodes, return_graph=True)
    d = model.gi.state.out_channels
    assert proj.shape == (2, 84, 30)
    assert visual.shape == visual_out.shape == (2, d, 84)
    assert semantic_out.shape == (2, d, 7)
    assert out.shape == x.shape


def test_ginet_interaction_passes_class_information_to_the_pixels():
    torch.manual_seed(0)
    unit = GIUnit(8, 6, num_nodes=5, num_classes=4).eval()
    randomize_norms(unit)
    x = torch.randn(1, 8, 4, 5)
    semantic = torch.randn(1, 6, 4)
    other = torch.randn(1, 6, 4)
    # The authors start the interaction scales at zero: the pixels see no class information yet.
    torch.testing.assert_close(unit(x, semantic)[0], unit(x, other)[0])
    with torch.no_grad():
        unit.gamma_visual.fill_(1.0)
    assert not torch.allclose(unit(x, semantic)[0], unit(x, other)[0])


def test_ginet_messages_use_softmax_over_classes_and_over_visual_nodes():
    torch.manual_seed(0)
    unit = GIUnit(8, 6, num_nodes=5, num_classes=4).eval()
    semantic, visual = torch.randn(2, 6, 4), torch.randn(2, 6, 5)
    to_semantic, to_visual = unit.transfer(semantic, visual)
    t = unit.transfer
    energy = t.query(semantic).transpose(1, 2) @ t.key(visual)  # [N, classes, nodes]
    torch.testing.assert_close(to_visual, t.value_semantic(semantic) @ energy.softmax(dim=1))
    torch.testing.assert_close(to_semantic, t.value_visual(visual) @ energy.softmax(dim=2).transpose(1, 2))


def test_ginet_loads_word_vectors_from_a_file_and_keeps_them_frozen(tmp_path: Path):
    vectors = np.random.default_rng(0).standard_normal((5, 12)).astype(np.float32)
    path = tmp_path / "classes.npy"
    np.save(path, vectors)
    model = small("ginet", num_classes=5, word_vectors=str(path))
    embedding = model.semantic.embedding
    assert torch.equal(embedding.weight, torch.from_numpy(vectors))
    assert not embedding.weight.requires_grad
    assert model.semantic.mlp[0].in_features == 12
    with torch.no_grad():
        assert model(torch.randn(1, 3, 40, 48)).shape == (1, 5, 40, 48)


def test_ginet_learns_its_class_table_by_default():
    model = small("ginet", num_classes=5)
    assert model.semantic.embedding.weight.shape == (5, 300)
    assert model.semantic.embedding.weight.requires_grad


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((4, 12), np.float32), r"shape \(4, 12\); expected \(5, D\)"),
        (np.zeros((5,), np.float32), r"shape \(5,\); expected \(5, D\)"),
        (np.zeros((5, 12), np.int64), "must be finite floats"),
        (np.full((5, 12), np.nan, np.float32), "must be finite floats"),
    ],
)
def test_ginet_refuses_bad_word_vectors_in_one_line(tmp_path: Path, array: np.ndarray, match: str):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(UserInputError, match=match) as caught:
        create_model("ginet", num_classes=5, word_vectors=str(path), **model_info("ginet").test_config)
    assert "\n" not in str(caught.value)


def test_ginet_refuses_missing_or_pickled_word_vector_files(tmp_path: Path):
    with pytest.raises(UserInputError, match="does not exist"):
        create_model("ginet", word_vectors=str(tmp_path / "none.npy"))
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"cat": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="cannot read word vectors") as caught:
        create_model("ginet", word_vectors=str(pickled))
    assert "\n" not in str(caught.value)
    archive = tmp_path / "vectors.npz"
    np.savez(archive, vectors=np.zeros((21, 300), np.float32))
    with pytest.raises(UserInputError, match="several arrays"):
        create_model("ginet", word_vectors=str(archive))


def test_semantic_context_loss_is_bce_against_the_classes_present():
    target = torch.full((2, 4, 4), 255)
    target[0, :2] = 0
    target[0, 2:, :2] = 2
    target[1] = 1
    presence = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    logits = torch.randn(2, 3)
    expected = nn.functional.binary_cross_entropy_with_logits(logits, presence)
    torch.testing.assert_close(semantic_context_loss(logits, target), expected)
    confident = (presence * 2 - 1) * 20
    assert semantic_context_loss(confident, target) < 1e-6


def test_ginet_full_size_uses_256_states_84_nodes_and_300d_words():
    model = on_meta("ginet")
    assert (model.reduce[0].out_channels, model.reduce[0].kernel_size) == (512, (3, 3))
    assert model.gi.state.out_channels == 256 and model.gi.proj.out_channels == 84
    assert model.semantic.embedding.weight.shape == (21, 300)
    assert model.centroids.shape == (21, 256)


# --------------------------------------------------------------------------- all three
@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_training_adds_the_aux_head_and_eval_returns_logits(name: str):
    model = small(name, num_classes=4)
    x = torch.randn(2, 3, 33, 47)
    with torch.no_grad():
        assert model(x).shape == (2, 4, 33, 47)
    outputs = model.train()(x)
    expected = {"out", "aux", "sc"} if name == "ginet" else {"out", "aux"}
    assert set(outputs) == expected
    assert outputs["out"].shape == outputs["aux"].shape == (2, 4, 33, 47)
    if name == "ginet":
        assert outputs["sc"].shape == (2, 4)
    sum(o.sum() for o in outputs.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", GRAPH_MODELS)
def test_unknown_backbone_lists_the_choices(name: str):
    with pytest.raises(UserInputError, match="resnet50, resnet101"):
        create_model(name, backbone="resnet18")


def conv(c_in: int, c_out: int, k: int = 1, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


BN_512, BN_1024 = 2 * 512, 2 * 1024
AUX = conv(1024, 256, 3, bias=False) + 2 * 256 + conv(256, 21)  # PSPNet's layer3 head, 2,365,205
CLASSIFIER = conv(512, 21)
GLORE_HEAD = (
    conv(2048, 512, bias=False)
    + BN_512  # reduce
    + conv(512, 128)
    + conv(512, 64)  # state, projection
    + conv(64, 64)
    + conv(128, 128, bias=False)  # graph conv: across nodes, across channels
    + conv(128, 512, bias=False)
    + BN_512  # extend
)
GCU_HEAD = (
    sum(2 * 2048 * k + 2048 * 512 + BN_512 for k in (2, 4, 8, 32))  # anchors, sigmas, W_g, BN
    + conv(2048 + 4 * 512, 512, 3, bias=False)
    + BN_512
)
GINET_HEAD = (
    conv(2048, 512, 3, bias=False)
    + BN_512  # reduce
    + 21 * 300
    + (300 * 128 + 128)
    + 2 * 128
    + (128 * 256 + 256)
    + 2 * 256  # word table, MLP
    + conv(512, 84)
    + conv(512, 256)  # projection, state
    + conv(84, 84)
    + conv(256, 256, bias=False)
    + conv(21, 21)
    + conv(256, 256, bias=False)  # two graph convs
    + 2 * conv(256, 128)
    + 2 * conv(256, 256)  # query, key, two values
    + 84
    + 21  # interaction scales
    + conv(256, 512, bias=False)
    + BN_512  # extend
    + 21 * 256  # class centroids
)


# Counted on the meta device: sum(p.numel() for p in create_model(name, backbone=b).parameters()).
@pytest.mark.parametrize(
    "name, head, total_resnet50",
    [
        ("glore", GLORE_HEAD, 27_119_210),
        ("gcu", GCU_HEAD, 49_146_218),
        ("ginet", GINET_HEAD, 36_048_885),
    ],
)
def test_full_size_parameter_counts(name: str, head: int, total_resnet50: int):
    assert n_params(on_meta(name)) == RESNET50_PARAMS + head + CLASSIFIER + AUX == total_resnet50
    assert n_params(on_meta(name, backbone="resnet101")) == RESNET101_PARAMS + head + CLASSIFIER + AUX
