"""``common.files.atomic_open``: the one atomic, durable file write everything uses."""

from __future__ import annotations

import os

import pytest

from bnrl.common import files


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "results.json"
    files.atomic_write(path, "old")
    files.atomic_write(path, "new")
    assert path.read_text() == "new"
    files.atomic_write(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert os.listdir(tmp_path) == ["results.json"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path):
    path = tmp_path / "summary.json"
    files.atomic_write(path, "complete")
    with pytest.raises(RuntimeError), files.atomic_open(path) as f:
        f.write("torn hal")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "complete"
    assert os.listdir(tmp_path) == ["summary.json"]


def test_data_and_directory_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.path.isdir(
        f"/proc/self/fd/{fd}"))), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace",)),
                                                     real_replace(a, b)))
    files.atomic_write(tmp_path / "x.txt", "data")
    assert events == [("fsync", False), ("replace",), ("fsync", True)]


def test_disk_full_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    files.atomic_write(path, "old report")

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        files.atomic_write(path, "new report")
    assert path.read_text() == "old report"
    assert os.listdir(tmp_path) == ["report.md"]


def test_only_whole_file_modes():
    with pytest.raises(ValueError, match="mode must be"), files.atomic_open("x", "a"):
        pass


def test_atomic_directory_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    target = tmp_path / "export"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(
        f"/proc/self/fd/{fd}")), real_fsync(fd)))
    with files.atomic_directory(target) as tmp:
        assert tmp.parent == tmp_path and not target.exists()
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"123")
    assert (target / "sub" / "weights.bin").read_bytes() == b"123"
    # Every file and directory was synced under its temporary name, then the parent.
    assert any(p.endswith("/sub/weights.bin") and ".tmp/" in p for p in synced)
    assert synced[-1] == str(tmp_path)
    assert oct(target.stat().st_mode & 0o777) == oct(0o777 & ~_umask())
    with pytest.raises(RuntimeError), files.atomic_directory(tmp_path / "broken") as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("failed mid-export")
    assert sorted(os.listdir(tmp_path)) == ["export"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
