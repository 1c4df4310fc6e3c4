"""Atomic output leaves nothing behind on failure; shapes parse with clear errors."""

from __future__ import annotations

import os

import pytest

from segdeploy.errors import UserInputError
from segdeploy.fileio import atomic_output, write_text_atomic
from segdeploy.shapes import check_shape, format_shape, parse_shape


def test_atomic_output_renames_only_when_complete(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"abc")
        assert not target.exists()
    assert target.read_bytes() == b"abc"
    assert list(tmp_path.iterdir()) == [target]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_output_failure_leaves_no_partial_or_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_keeps_previous_file_on_failure(tmp_path):
    target = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"), atomic_output(tmp_path / "nope" / "out.bin"):
        pass


def test_unwritable_directory_is_a_clear_error(tmp_path, monkeypatch):
    # Simulated: CI runs as root, which may write anywhere.
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("segdeploy.fileio.tempfile.mkstemp", refuse)
    with pytest.raises(UserInputError, match="cannot write .*Permission denied"), atomic_output(tmp_path / "out.bin"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_parse_shape_accepts_nchw():
    assert parse_shape("2x3x97x131") == (2, 3, 97, 131)
    assert format_shape((2, 3, 97, 131)) == "2x3x97x131"


@pytest.mark.parametrize("text", ["3x512x512", "1x3x512", "1x3xAx512", "0x3x64x64", "1x3x-4x64", ""])
def test_parse_shape_rejects_bad_text_with_the_expected_form(text):
    with pytest.raises(UserInputError, match="expected NxCxHxW"):
        parse_shape(text)


def test_check_shape_names_channels_and_minimum_size():
    with pytest.raises(UserInputError, match="takes 1 channels"):
        check_shape((1, 3, 64, 64), in_channels=1)
    with pytest.raises(UserInputError, match="at least 32"):
        check_shape((1, 3, 31, 64), in_channels=3, min_size=32)
    assert check_shape((2, 3, 33, 47), in_channels=3, min_size=32) == (2, 3, 33, 47)
