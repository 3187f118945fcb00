"""Atomic writes: a file is either its old self or complete, whatever happens mid-write (an error, a
full disk, SIGKILL), and every failure the user can act on is one line (UserError)."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deploycompress import fileio
from deploycompress.errors import UserError
from deploycompress.fileio import (atomic_write, ensure_writable_dir, remove_stale_temporaries, sha256, write_bytes,
                                   write_json)


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "sub" / "report.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2, "b": [1, 2]})
    assert target.read_text() == '{\n  "a": 2,\n  "b": [\n    1,\n    2\n  ]\n}\n'
    assert temporaries(target.parent) == []


def test_written_files_get_the_usual_mode_not_mkstemps_0600(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_bytes(tmp_path / "model.onnx", b"onnx")
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o644  # readable by the release job that ships it


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_bytes(tmp_path / "model.onnx", b"the complete old model")

    def half_then_fail(path: Path) -> None:
        path.write_bytes(b"half a new mod")
        raise ValueError("writer bug")

    with pytest.raises(ValueError, match="writer bug"):  # a bug is not dressed up as bad input
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"the complete old model"
    assert temporaries(tmp_path) == []


def test_disk_full_while_writing_is_one_line_and_keeps_the_old_file(tmp_path):
    target = write_bytes(tmp_path / "report.json", b"{}")

    def fill_the_disk(path: Path) -> None:
        with open(path, "wb") as handle:
            handle.write(b"x" * 1000)
            raise enospc()

    with pytest.raises(UserError, match=r"could not write .*report\.json: No space left on device") as info:
        atomic_write(target, fill_the_disk)
    assert "\n" not in str(info.value)
    assert target.read_bytes() == b"{}"
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("step", ["fsync", "replace"])
def test_enospc_at_fsync_or_rename_is_one_line(tmp_path, monkeypatch, step):
    target = write_bytes(tmp_path / "plan.json", b"old")

    def fail(*args, **kwargs):
        raise enospc()

    monkeypatch.setattr(fileio.os, step, fail)
    with pytest.raises(UserError, match="No space left on device"):
        write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert temporaries(tmp_path) == []


def test_torch_save_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """torch.save hides ENOSPC in a RuntimeError ("unexpected pos"); a full disk still reads as one."""
    class Full:
        f_bavail, f_frsize = 0, 4096

    def save_to_full_disk(path: Path) -> None:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(fileio.os, "statvfs", lambda _: Full())
    with pytest.raises(UserError, match=r"could not write .*pruned\.pt: No space left on device"):
        atomic_write(tmp_path / "pruned.pt", save_to_full_disk)
    monkeypatch.undo()
    assert temporaries(tmp_path) == []
    with pytest.raises(RuntimeError):  # with room on the disk the same error is a bug, and shows as one
        atomic_write(tmp_path / "pruned.pt", save_to_full_disk)


def test_torch_save_on_a_real_full_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; test_torch_save_on_a_full_disk_is_one_line covers the logic")
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("this container may not mount a tmpfs; the monkeypatched test covers the logic")
    try:
        old = disk / "finetuned.pt"
        old.write_bytes(b"the user's old weights")
        with pytest.raises(UserError, match="No space left on device"):
            atomic_write(old, lambda p: torch.save({"w": torch.zeros(100_000)}, p))
        assert old.read_bytes() == b"the user's old weights"
        assert temporaries(disk) == []
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_interrupt_mid_write_removes_the_temporary(tmp_path):
    def interrupted(path: Path) -> None:
        path.write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "model.onnx", interrupted)
    assert list(tmp_path.iterdir()) == []


KILLED_WRITER = """
import sys, time
from pathlib import Path
from deploycompress.fileio import atomic_write

def slow(path):
    with open(path, "wb") as handle:
        handle.write(b"half of a model")
        handle.flush()
        Path(sys.argv[2]).touch()  # tell the test we are mid-write
        time.sleep(60)

atomic_write(sys.argv[1], slow)
"""


def test_sigkill_mid_write_never_leaves_a_file_that_looks_complete(tmp_path):
    target, started = tmp_path / "model.onnx", tmp_path / "started"
    target.write_bytes(b"the complete old model")
    process = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(started)])
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert target.read_bytes() == b"the complete old model"
    leftovers = temporaries(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".model.onnx.")  # hidden, never the real name
    remove_stale_temporaries(tmp_path)  # what the next run in this directory does first
    assert temporaries(tmp_path) == [] and target.exists()


def test_ensure_writable_dir(tmp_path):
    made = ensure_writable_dir(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the probe file is gone
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    with pytest.raises(UserError, match="is not a directory"):
        ensure_writable_dir(afile)
    with pytest.raises(UserError, match="not writable"):
        ensure_writable_dir(afile / "below")
    assert afile.read_text() == "keep me"


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)
    path = write_bytes(tmp_path / "blob", data)
    assert sha256(path) == hashlib.sha256(data).hexdigest()
