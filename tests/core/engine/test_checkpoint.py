from __future__ import annotations

import pytest
import torch

from core.errors import CheckpointError
from core.io import atomic_write, atomic_write_dir, load_state, save_state


def test_a_failed_write_leaves_the_previous_file_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_state(path, {"step": 1, "w": torch.ones(3)})

    def crash(tmp):
        tmp.write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert load_state(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_a_failed_directory_write_keeps_the_old_directory(tmp_path):
    atomic_write_dir(tmp_path / "best", lambda d: (d / "a.txt").write_text("old"))

    def crash(d):
        (d / "a.txt").write_text("new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write_dir(tmp_path / "best", crash)
    assert (tmp_path / "best" / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_trainer_state_is_loaded_without_unpickling_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt or not a jointtrain checkpoint"):
        load_state(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_state(tmp_path / "missing.pt")
