"""User modules named as file.py:factory load like zoo models, with clear errors."""

from __future__ import annotations

import textwrap

import pytest
import torch

from segdeploy.artifact import Metadata
from segdeploy.errors import UserInputError
from segdeploy.models.loading import load_model, rebuild_model

USER_FILE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)

        def forward(self, x):
            return self.conv(x)

    def build(num_classes=3):
        return Net(num_classes)

    def not_a_module():
        return 42

    def broken():
        raise RuntimeError("factory exploded")
    """
)


@pytest.fixture
def user_file(tmp_path):
    path = tmp_path / "mynet.py"
    path.write_text(USER_FILE)
    return path


def test_user_factory_and_class_load_with_num_classes(user_file):
    for factory in ("build", "Net"):
        loaded = load_model(f"{user_file}:{factory}", num_classes=5)
        assert loaded.info is None
        assert not loaded.module.training
        assert loaded.module(torch.zeros(1, 3, 4, 4)).shape == (1, 5, 4, 4)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("missing", "has no callable 'missing'"),
        ("not_a_module", "did not return a torch.nn.Module"),
        ("broken", "factory exploded"),
    ],
)
def test_bad_factories_give_one_line(user_file, factory, message):
    with pytest.raises(UserInputError, match=message) as info:
        load_model(f"{user_file}:{factory}")
    assert "\n" not in str(info.value)


def test_missing_user_file_is_named(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(f"{tmp_path}/nope.py:build")


def test_user_file_with_syntax_error_is_reported(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("def oops(:\n")
    with pytest.raises(UserInputError, match="importing .* failed: SyntaxError"):
        load_model(f"{path}:oops")


# --------------------------------------------------------------------------- seeded builds, rebuilds

DRAWS_EVERYWHERE = textwrap.dedent(
    """
    import random

    import numpy as np
    import torch
    from torch import nn

    class Noisy(nn.Module):
        def __init__(self, num_classes=3):
            super().__init__()
            self.conv = nn.Conv2d(3, num_classes, 1)
            # initial values from all three random streams, as user code does
            self.register_buffer("offset", torch.tensor([random.random(), float(np.random.rand())]))

        def forward(self, x):
            return self.conv(x) + self.offset.sum()

    def build(num_classes=3):
        return Noisy(num_classes)
    """
)


def _random_states() -> tuple:
    import random

    import numpy as np

    return torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()


def _same_states(a: tuple, b: tuple) -> bool:
    return torch.equal(a[0], b[0]) and a[1] == b[1] and (a[2] == b[2]).all()


@pytest.mark.parametrize("spec", ["segnet", "user"])
def test_builds_draw_the_same_weights_whatever_ran_before_and_leave_the_random_state_alone(tmp_path, spec):
    if spec == "user":
        (tmp_path / "noisy.py").write_text(DRAWS_EVERYWHERE)
        spec = f"{tmp_path / 'noisy.py'}:build"
    config = {"width_mult": 0.125} if spec == "segnet" else {}
    built = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        before = _random_states()
        built.append(load_model(spec, num_classes=3, **config))
        assert _same_states(before, _random_states())  # nothing leaks out of the build
    first, second = (b.module.state_dict() for b in built)
    assert all(torch.equal(first[k], second[k]) for k in first)  # nor into it
    assert built[0].init_seed == 0 and built[0].weights is None
    other = load_model(spec, num_classes=3, seed=7, **config).module.state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)


def _metadata(spec: str, **fields) -> Metadata:
    return Metadata(architecture=spec, source="file", num_classes=3, in_channels=3, **fields)


def _saved(tmp_path, spec: str, name: str = "w.pt") -> tuple:
    from segdeploy.fileio import sha256_file

    source = load_model(spec, num_classes=3, seed=11).module
    path = tmp_path / name
    torch.save(source.state_dict(), path)
    return source, path, sha256_file(path)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_rebuild_finds_the_recorded_checkpoint_where_it_was_or_beside_the_file(user_file, tmp_path, monkeypatch):
    spec = f"{user_file}:build"
    source, path, sha = _saved(tmp_path, spec)
    meta = _metadata(spec, weights=str(path), weights_path=str(path), weights_sha256=sha, init_seed=0)
    assert _same_weights(rebuild_model(meta, where="m.onnx").module, source)
    # exported as "w.pt" from tmp_path; the file and its checkpoint moved together elsewhere, verified from /
    moved = tmp_path / "moved"
    moved.mkdir()
    path.rename(moved / "w.pt")
    meta = _metadata(spec, weights="w.pt", weights_path=str(path), weights_sha256=sha, init_seed=0)
    monkeypatch.chdir("/")
    assert _same_weights(rebuild_model(meta, where="m.onnx", file=moved / "m.onnx").module, source)


def test_a_moved_or_changed_checkpoint_asks_for_weights_in_one_line(user_file, tmp_path):
    spec = f"{user_file}:build"
    _, path, sha = _saved(tmp_path, spec)
    meta = _metadata(spec, weights=str(path), weights_path=str(path), weights_sha256=sha, init_seed=0)
    torch.save(load_model(spec, num_classes=3, seed=12).module.state_dict(), path)  # retrained in place
    with pytest.raises(UserInputError, match="has changed since .*pass --weights") as changed:
        rebuild_model(meta, where="m.onnx")
    path.unlink()
    with pytest.raises(UserInputError, match="no longer there .*pass --weights") as moved:
        rebuild_model(meta, where="m.onnx")
    assert "\n" not in str(changed.value) + str(moved.value)


def test_explicit_weights_override_the_record_and_a_different_checkpoint_is_noted(user_file, tmp_path):
    spec = f"{user_file}:build"
    source, path, sha = _saved(tmp_path, spec)
    meta = _metadata(spec, weights="gone.pt", weights_sha256=sha, init_seed=0)
    assert _same_weights(rebuild_model(meta, where="m.onnx", weights=path).module, source)
    other = tmp_path / "other.pt"
    torch.save(load_model(spec, num_classes=3, seed=13).module.state_dict(), other)
    assert "not the checkpoint the file was exported with" in rebuild_model(meta, where="m", weights=other).notes[0]


def test_a_file_recording_no_checkpoint_and_no_seed_asks_for_weights(user_file):
    with pytest.raises(UserInputError, match="records neither the checkpoint .* pass --weights"):
        rebuild_model(_metadata(f"{user_file}:build"), where="old.onnx")


def test_a_seeded_rebuild_redraws_the_exported_weights_and_notes_another_torch(user_file):
    spec = f"{user_file}:build"
    exported = load_model(spec, num_classes=3, seed=5).module
    meta = _metadata(spec, init_seed=5, torch_version=torch.__version__)
    rebuilt = rebuild_model(meta, where="m.onnx")
    assert _same_weights(rebuilt.module, exported) and not rebuilt.notes
    meta.torch_version = "1.0.0"
    assert "torch 1.0.0" in rebuild_model(meta, where="m.onnx").notes[0]


def test_every_zoo_model_is_rebuilt_with_the_same_initial_weights():
    from segdeploy.models import list_models

    for name in list_models():
        torch.manual_seed(1)
        first = load_model(name, width_mult=0.125).module.state_dict()
        torch.manual_seed(2)
        second = load_model(name, width_mult=0.125).module.state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first), name
