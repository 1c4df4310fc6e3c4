"""Where a bundle is written: existing empty directories and mount points work, bad locations are one line
with exit 2 and leave nothing behind, and a killed run leaves nothing that trips the next one."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from bundle_helpers import invoke, listing, one_error_line

from segdeploy.bundle import check_bundle, write_bundle
from segdeploy.errors import UserInputError


def test_an_existing_empty_directory_is_filled_in_place_like_a_mount_point(onnx_files, tmp_path, monkeypatch):
    target = tmp_path / "volume"
    target.mkdir()
    real_rename = os.rename

    def rename(src, dst):  # a mount point cannot be renamed onto or away
        if Path(dst).resolve() == target.resolve() or Path(src).resolve() == target.resolve():
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert write_bundle(onnx_files["logits"], target) == target
    assert check_bundle(target).ok
    assert [p.name for p in tmp_path.iterdir()] == ["volume"] and not any(
        p.name.startswith(".") for p in target.iterdir()
    )


def test_dash_o_dot_in_an_empty_working_directory_writes_there(onnx_files, tmp_path, monkeypatch):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    code, output = invoke("bundle", onnx_files["logits"], "-o", ".")
    assert code == 0, output
    assert (here / "segdeploy.json").is_file() and check_bundle(here).ok
    code, output = invoke("bundle", onnx_files["logits"], "-o", ".")
    assert code == 2
    one_error_line(output, "exists and is not empty", "--force")


def test_an_unwritable_parent_is_one_line_and_leaves_nothing(onnx_files, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b")
    assert code == 2
    one_error_line(output, f"cannot write bundle {tmp_path / 'b'}", "is not writable (Permission denied)")
    assert listing(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_parent_is_one_line(onnx_files, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, output = invoke("bundle", onnx_files["logits"], "-o", parent / "b")
    finally:
        parent.chmod(0o755)
    assert code == 2
    one_error_line(output, "is not writable")
    assert listing(parent) == []


def test_a_full_disk_midway_is_one_line_and_leaves_nothing(onnx_files, tmp_path, monkeypatch):
    import shutil

    real_copy = shutil.copyfile

    def copy(src, dst, *args, **kwargs):
        if str(dst).endswith("client.py"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy)
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "b")
    assert code == 2
    one_error_line(output, "cannot write bundle", "No space left on device")
    assert listing(tmp_path) == []


@pytest.mark.parametrize("where", ["new", "empty"])
def test_a_killed_run_leaves_nothing_that_trips_the_next(onnx_files, tmp_path, where):
    target = tmp_path / "b"
    if where == "empty":
        target.mkdir()
    script = (
        "import os, signal, sys\n"
        "from segdeploy.bundle import write as w\n"
        "real = w._write_golden\n"
        "def dying(root, *a):\n"
        "    real(root, *a)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "w._write_golden = dying\n"
        "w.write_bundle(sys.argv[1], sys.argv[2])\n"
    )
    killed = subprocess.run([sys.executable, "-c", script, str(onnx_files["logits"]), str(target)], timeout=300)
    assert killed.returncode == -9
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert leftovers  # the killed run did leave its temporary directory...
    code, output = invoke("bundle", onnx_files["logits"], "-o", target)
    assert code == 0, output  # ...which the next run removes instead of tripping over
    assert check_bundle(target).ok
    assert [p.name for p in tmp_path.iterdir()] == ["b"] and not [p for p in target.iterdir() if ".tmp" in p.name]


def test_a_running_writers_temporary_directory_is_left_alone(onnx_files, tmp_path):
    alive = tmp_path / f".b.segdeploy-bundle-{os.getppid()}-x.tmp"  # a live process: maybe a concurrent run
    alive.mkdir()
    write_bundle(onnx_files["logits"], tmp_path / "b")
    assert alive.is_dir()


def test_existing_directory_is_kept_without_force_and_replaced_with_it(onnx_files, tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "mine.txt").write_text("keep me")
    code, output = invoke("bundle", onnx_files["logits"], "-o", target)
    assert code == 2
    one_error_line(output, "exists and is not empty", "--force")
    assert listing(target) == ["mine.txt"]
    code, output = invoke("bundle", onnx_files["logits"], "-o", target, "--force")
    assert code == 0, output
    assert "mine.txt" not in listing(target) and check_bundle(target).ok
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary or old directories left


def test_force_refuses_a_mount_point_the_working_directory_or_a_directory_holding_an_input(
    onnx_files, tmp_path, monkeypatch
):
    import shutil

    target = tmp_path / "b"
    target.mkdir()
    shutil.copy(onnx_files["logits"], target / "model_in.onnx")
    with pytest.raises(UserInputError, match="holds the input"):
        write_bundle(target / "model_in.onnx", target, force=True)
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == target.resolve())
    code, output = invoke("bundle", onnx_files["logits"], "-o", target, "--force")
    assert code == 2
    one_error_line(output, "is a mount point", "empty it")
    monkeypatch.chdir(target)
    with pytest.raises(UserInputError, match="current directory"):
        write_bundle(onnx_files["logits"], ".", force=True)
    assert listing(target) == ["model_in.onnx"]


def test_a_failure_midway_leaves_no_bundle_and_keeps_the_old_one(onnx_files, tmp_path, monkeypatch):
    from segdeploy.bundle import write as writer

    def broken(root, *args):
        (root / "golden").mkdir()
        raise RuntimeError("bug")

    monkeypatch.setattr(writer, "_write_golden", broken)
    with pytest.raises(RuntimeError, match="bug"):
        write_bundle(onnx_files["logits"], tmp_path / "new")
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old"
    old.mkdir()
    (old / "previous.txt").write_text("old bundle")
    with pytest.raises(RuntimeError, match="bug"):
        write_bundle(onnx_files["logits"], old, force=True)
    assert listing(tmp_path) == ["old", "old/previous.txt"]


def test_a_file_in_the_way_or_a_missing_parent_is_one_line(onnx_files, tmp_path):
    (tmp_path / "file").write_text("x")
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "file")
    assert code == 2
    one_error_line(output, "it exists and is not a directory")
    code, output = invoke("bundle", onnx_files["logits"], "-o", tmp_path / "no" / "b")
    assert code == 2
    one_error_line(output, "does not exist")
    assert listing(tmp_path) == ["file"]
