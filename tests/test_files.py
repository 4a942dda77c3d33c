"""Writing files (``polypseg.files``): atomic files and folders, recovery after a kill, the umask, stale
temporaries, and finding the input files."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from polypseg.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_folder,
    atomic_write_text,
    recover_folder,
    remove_stale_temporaries,
)
from polypseg.inference import expand_inputs

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions, fork and flock")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target) as temporary:
        assert temporary.parent == target.parent
        assert temporary != target
        temporary.write_text("hello")
    assert target.read_text() == "hello"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_write_keeps_old_file_when_block_raises(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as temporary:
            temporary.write_text("half-written")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_atomic_write_helpers(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    atomic_write_text(tmp_path / "b.txt", "replaced")
    assert (tmp_path / "b.txt").read_text() == "replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt"]


def test_atomic_write_folder_replaces_the_folder_as_a_whole(tmp_path):
    folder = tmp_path / "best"
    for version in ("1", "2"):
        with atomic_write_folder(folder) as staging:
            assert not folder.joinpath("a").exists() or folder.joinpath("a").read_text() != version
            (staging / "a").write_text(version)
            (staging / "b").write_text(version)
        assert {p.name: p.read_text() for p in folder.iterdir()} == {"a": version, "b": version}
    with pytest.raises(RuntimeError):
        with atomic_write_folder(folder) as staging:
            (staging / "a").write_text("3")
            raise RuntimeError("interrupted")
    assert {p.name: p.read_text() for p in folder.iterdir()} == {"a": "2", "b": "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def _state(tmp_path: Path, **folders: str) -> Path:
    for name, version in folders.items():
        folder = tmp_path / {"final": "best", "new": ".best.new", "old": ".best.old"}[name]
        folder.mkdir()
        (folder / "a").write_text(version)
    return tmp_path / "best"


@pytest.mark.parametrize(
    "left_behind, expected",
    [
        ({"final": "2", "new": "3"}, "2"),  # killed while writing the new copy
        ({"new": "3", "old": "2"}, "3"),  # killed between the two renames: the new copy is complete
        ({"final": "3", "old": "2"}, "3"),  # killed while deleting the old copy
        ({"new": "1"}, None),  # killed while writing the very first copy
        ({"old": "2"}, "2"),  # the swap failed with an error after moving the old copy aside
    ],
)
def test_recover_folder_after_a_kill(tmp_path, left_behind, expected):
    folder = _state(tmp_path, **left_behind)
    recover_folder(folder)
    if expected is None:
        assert not folder.exists()
    else:
        assert (folder / "a").read_text() == expected
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_remove_stale_temporaries_only_removes_ours(tmp_path):
    (tmp_path / ".polypseg-tmp-0123456789abcdef.last.ckpt.tmp").write_bytes(b"half")  # no live writer holds it
    (tmp_path / "last.ckpt").write_bytes(b"whole")
    (tmp_path / "notes.tmp").write_text("not ours: not hidden")
    (tmp_path / ".notes.abc123.tmp").write_text("not ours: another pattern")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".polypseg-tmp-0123456789abcdef.last.ckpt.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.abc123.tmp", "last.ckpt", "notes.tmp"]


# --------------------------------------------------------------------------------------------------
# Permissions and stale temporary files (finding 13)


@pytest.fixture
def umask():
    """Set the process umask for one test: ``umask(0o022)``; the previous one is restored afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


@posix_only
@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "a")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"b")
    with atomic_write_folder(tmp_path / "best") as staging:
        atomic_write_text(staging / "config.json", "{}")
    for path in (tmp_path / "a.txt", tmp_path / "sub" / "b.bin", tmp_path / "best" / "config.json"):
        assert stat.S_IMODE(path.stat().st_mode) == file_mode, path
    for path in (tmp_path / "sub", tmp_path / "best"):
        assert stat.S_IMODE(path.stat().st_mode) == folder_mode, path


def kill_during_write(target: Path) -> Path:
    """Fork a process that dies by SIGKILL inside :func:`atomic_write`; return the temporary file it left."""
    before = set(target.parent.iterdir()) if target.parent.is_dir() else set()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child never returns
        try:
            with atomic_write(target) as temporary:
                temporary.write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    (left,) = set(target.parent.iterdir()) - before
    return left


@posix_only
def test_stale_temporaries_of_a_killed_writer_are_removed_and_nothing_else(tmp_path):
    stale = kill_during_write(tmp_path / "x_mask.png")
    assert stale.name.startswith(".") and stale.name.endswith(".tmp") and not (tmp_path / "x_mask.png").exists()
    users = [".notes.tmp", ".x_mask.png.abc12345.tmp", "notes.tmp", ".polypseg-tmp-notes.tmp"]
    for name in users:
        (tmp_path / name).write_text("the user's")
    with atomic_write(tmp_path / "live.png") as live:  # a writer that is still running keeps its file
        live.write_bytes(b"in progress")
        assert remove_stale_temporaries(tmp_path) == [stale]
        assert live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*users, "live.png"])


@pytest.mark.precision
def test_expand_inputs_files_folders_globs(synthetic_dataset, tmp_path):
    data = synthetic_dataset()
    (data / "images" / "notes.txt").write_text("not an image")
    paths, problems = expand_inputs(
        [data / "images", str(data / "images" / "sample_00[01].jpg"), tmp_path / "nope.jpg", str(tmp_path / "*.none")]
    )
    assert [p.name for p in paths] == [f"sample_00{i}.jpg" for i in range(4)]
    assert len(problems) == 2
