"""Atomic writes: all or nothing, ordinary permissions."""

from __future__ import annotations

import os

import pytest

from frernn.errors import FrernnError
from frernn.io import atomic_write, atomic_write_json


def test_written_file_has_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "a.json").read_text() == '{\n  "x": 1\n}\n'


def test_failing_writer_leaves_nothing(tmp_path):
    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(tmp_path / "out.txt", broken)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_one_line_error(tmp_path):
    """An OSError while writing (e.g. ENOSPC) becomes a FrernnError naming the file."""

    def full(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(FrernnError, match="cannot write .*out.txt: No space left on device"):
        atomic_write(tmp_path / "out.txt", full)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_survives_failed_rewrite(tmp_path):
    atomic_write_json(tmp_path / "keep.json", [1])
    with pytest.raises(FrernnError):
        atomic_write(tmp_path / "keep.json", lambda tmp: (_ for _ in ()).throw(OSError(5, "I/O")))
    assert (tmp_path / "keep.json").read_text() == "[\n  1\n]\n"


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A real 32 KiB tmpfs (needs root, as in CI) to run out of space for real."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    result = os.system(f"mount -t tmpfs -o size=32k tmpfs {mount} 2>/dev/null")
    if result != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    os.system(f"umount {mount}")


def test_real_disk_full_is_one_line_error_and_leaves_nothing(tiny_filesystem):
    with pytest.raises(FrernnError, match="No space left on device") as info:
        atomic_write_json(tiny_filesystem / "big.json", ["x" * 1000] * 100)
    assert "\n" not in str(info.value) and "big.json" in str(info.value)
    assert list(tiny_filesystem.iterdir()) == []


def test_unwritable_output_folder_is_one_line_error(tmp_path):
    """A folder that cannot be made (a regular file stands in its path) names the output."""
    (tmp_path / "file").write_text("")
    target = tmp_path / "file" / "run" / "metrics.json"
    with pytest.raises(FrernnError, match=r"cannot write .*metrics\.json"):
        atomic_write_json(target, {"x": 1})
