"""Checkpoints load without executing anything, unwrap common wrappers, and name mismatches."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from segdeploy.checkpoints import load_checkpoint, load_weights
from segdeploy.errors import CheckpointError


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_malicious_pickle_is_refused_without_executing(tmp_path, code_running_payload):
    payload, marker = code_running_payload
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": payload}, evil)
    with pytest.raises(CheckpointError, match="refused: loading it would run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_raw_pickle_file_is_refused_without_executing(tmp_path, code_running_payload):
    payload, marker = code_running_payload
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError):
        load_checkpoint(evil)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"\x00garbage" * 10, "corrupt"), (None, "does not exist")],
)
def test_bad_files_are_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "ckpt.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save(_tiny().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("wrapper", ["state_dict", "model", "model_state_dict"])
def test_common_wrappers_and_module_prefix_are_unwrapped(tmp_path, wrapper):
    model = _tiny()
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pt"
    torch.save({wrapper: state, "epoch": 3}, path)
    loaded = load_checkpoint(path)
    assert set(loaded) == set(model.state_dict())


def test_load_weights_round_trip_gives_identical_outputs(tmp_path):
    source, target = _tiny().eval(), _tiny().eval()
    path = tmp_path / "ckpt.pt"
    torch.save(source.state_dict(), path)
    load_weights(target, path)
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(source(x), target(x))


def test_mismatch_names_missing_unexpected_and_shape_conflicts(tmp_path):
    state = _tiny().state_dict()
    state["0.weight"] = torch.zeros(5, 3, 3, 3)
    state["extra.bias"] = torch.zeros(1)
    del state["1.running_mean"]
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_weights(_tiny(), path)
    message = str(info.value)
    assert "0.weight (5, 3, 3, 3) vs model (4, 3, 3, 3)" in message
    assert "missing keys: 1.running_mean" in message
    assert "unexpected keys: extra.bias" in message


def test_checkpoint_without_tensors_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(CheckpointError, match="no tensors"):
        load_checkpoint(path)


# --------------------------------------------------------------------------- wrapper prefixes


class Wrapper(nn.Module):
    """A wrapper as users write one for export: the network is ``self.model``, so its keys start with ``model.``."""

    def __init__(self) -> None:
        super().__init__()
        self.model = _tiny()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _prefixed(state: dict, prefix: str) -> dict:
    return {prefix + k: v for k, v in state.items()}


def _check_loaded(target: nn.Module, source: nn.Module) -> None:
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(target.eval()(x), source.eval()(x))


def test_a_self_model_wrapper_keeps_its_own_model_prefix(tmp_path):
    source = Wrapper()
    path = tmp_path / "wrapper.pt"
    torch.save(source.state_dict(), path)  # keys "model.0.weight"...: already the model's own
    _check_loaded(load_weights(Wrapper(), path), source)


def test_a_lightning_checkpoint_of_a_wrapper_loses_only_lightnings_prefix(tmp_path):
    source = Wrapper()
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": _prefixed(source.state_dict(), "model."), "epoch": 3}, path)  # model.model.0.weight
    _check_loaded(load_weights(Wrapper(), path), source)


@pytest.mark.parametrize(
    "prefix",
    ["model.", "module.", "_orig_mod.", "module._orig_mod.", "_orig_mod.module.", "model.module."],
    ids=["lightning", "ddp", "compile", "ddp-of-compile", "compile-of-ddp", "lightning-of-ddp"],
)
def test_wrapper_prefixes_on_a_bare_model_are_stripped(tmp_path, prefix):
    source = _tiny()
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": _prefixed(source.state_dict(), prefix)}, path)
    _check_loaded(load_weights(_tiny(), path), source)


def test_torch_compile_and_data_parallel_state_dicts_load_into_the_plain_model(tmp_path):
    source = _tiny()
    for name, wrapped in (("compiled", torch.compile(source)), ("parallel", nn.DataParallel(torch.compile(source)))):
        path = tmp_path / f"{name}.pt"
        torch.save(wrapped.state_dict(), path)  # the keys torch itself writes
        _check_loaded(load_weights(_tiny(), path), source)


def test_inner_weights_for_a_wrapper_are_refused_in_one_line_naming_the_prefix(tmp_path):
    path = tmp_path / "inner.pt"
    torch.save(_tiny().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        load_weights(Wrapper(), path)
    message = str(info.value)
    assert "\n" not in message and "missing keys: model.0.weight" in message and "unexpected keys: 0.weight" in message
    assert "lack the model's 'model.' prefix" in message


def test_a_missing_num_batches_tracked_loads_exactly_when_strict_loading_accepts_it(tmp_path):
    state = _tiny().state_dict()  # carries torch's _metadata: BatchNorm saved at version 2
    plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # no _metadata
    torch.save(plain, tmp_path / "plain.pt")
    _tiny().load_state_dict(torch.load(tmp_path / "plain.pt"), strict=True)  # torch accepts it...
    load_weights(_tiny(), tmp_path / "plain.pt")  # ...and so does segdeploy
    del state["1.num_batches_tracked"]
    torch.save({"state_dict": _prefixed_keeping_metadata(state)}, tmp_path / "versioned.pt")
    with pytest.raises(RuntimeError, match="num_batches_tracked"):  # version 2 says it was saved: torch refuses
        _tiny().load_state_dict(state, strict=True)
    with pytest.raises(CheckpointError, match="missing keys: 1.num_batches_tracked"):
        load_weights(_tiny(), tmp_path / "versioned.pt")


def _prefixed_keeping_metadata(state: dict) -> dict:
    """``state`` saved by DDP: ``module.`` keys, and torch's ``_metadata`` under the same prefix."""
    from collections import OrderedDict

    out = OrderedDict(_prefixed(state, "module."))
    out._metadata = OrderedDict(  # type: ignore[attr-defined]
        (("module" + ("." + name if name else "")), value) for name, value in state._metadata.items()
    )
    return out


def test_checkpoint_keys_that_already_match_are_never_stripped(tmp_path):
    # a model whose only child is called "module": every key starts with "module.", and it is its own
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = _tiny()

    source = Holder()
    path = tmp_path / "holder.pt"
    torch.save(source.state_dict(), path)
    _check_loaded(load_weights(Holder(), path).module, source.module)
    assert set(load_checkpoint(path, keys=Holder().state_dict())) == set(source.state_dict())


# --------------------------------------------------------------------------- load and export

WRAPPED_NET = """
import torch
import torch.nn.functional as F
from torch import nn


class Inner(nn.Module):
    def __init__(self, num_classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x):
        return self.head(self.stem(x))


class Wrapped(nn.Module):
    # the usual export wrapper: the library model as self.model, its output upsampled to the input
    def __init__(self, num_classes=3):
        super().__init__()
        self.model = Inner(num_classes)

    def forward(self, x):
        return F.interpolate(self.model(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


def build(num_classes=3):
    return Wrapped(num_classes)


def bare(num_classes=3):
    return Inner(num_classes)
"""


@pytest.mark.parametrize(
    ("factory", "prefix"),
    [("build", ""), ("build", "model."), ("bare", "model."), ("bare", "module."), ("bare", "_orig_mod.")],
    ids=["self.model-wrapper", "lightning-of-wrapper", "lightning", "ddp", "compile"],
)
def test_wrapped_checkpoints_load_and_export_the_model_they_were_saved_from(tmp_path, factory, prefix):
    import numpy as np
    from helpers import calibrate_batchnorm

    from segdeploy.pipeline import ModelSpec, export_onnx
    from segdeploy.runtime import open_runner

    namespace: dict = {}
    exec(WRAPPED_NET, namespace)
    (tmp_path / "net.py").write_text(WRAPPED_NET)
    torch.manual_seed(3)
    source = calibrate_batchnorm(namespace[factory](), (2, 3, 32, 32))
    path = tmp_path / "trained.ckpt"
    torch.save({"state_dict": _prefixed(source.state_dict(), prefix), "epoch": 9}, path)
    out = tmp_path / "net.onnx"
    export_onnx(
        f"{tmp_path / 'net.py'}:{factory}", out, input_shape=(1, 3, 32, 32), spec=ModelSpec(num_classes=3, weights=path)
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 24), dtype=np.float32)
    with open_runner(out) as runner:
        got = runner.infer(x)
    expected = source.eval()(torch.from_numpy(x)).detach().numpy()
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()
