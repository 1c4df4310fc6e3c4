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
