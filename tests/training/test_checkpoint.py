"""Checkpoints (``polypseg.training.checkpoint``): never half-written, and a full disk is one line."""

from __future__ import annotations

import pytest
import torch

from polypseg.training import AtomicCheckpointIO


def test_checkpoint_io_never_leaves_a_partial_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 1}, path)
    assert io.load_checkpoint(path)["epoch"] == 1

    class Unpicklable:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("cannot save this")

    with pytest.raises(RuntimeError, match="cannot save"):
        io.save_checkpoint({"state_dict": {}, "epoch": 2, "bad": Unpicklable()}, path)
    assert io.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_full_disk_while_saving_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    path = tmp_path / "checkpoints" / "last.ckpt"

    def failing_save(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("[enforce fail at inline_container.cc:603] . basic_ios::clear: iostream error")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: usage(10**9, 10**9, 0))
    with pytest.raises(OSError, match="No space left on device") as caught:
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}, "epoch": 0}, path)
    assert str(caught.value).startswith(f"{path}: ") and "\n" not in str(caught.value)
    assert not list(path.parent.iterdir())
