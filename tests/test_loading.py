"""User modules named as file.py:factory load like zoo models, with clear errors."""

from __future__ import annotations

import textwrap

import pytest
import torch

from segdeploy.errors import UserInputError
from segdeploy.models.loading import load_model

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
