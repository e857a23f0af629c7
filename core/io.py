"""Durable, atomic writes: a crash, a Ctrl-C or a power loss never leaves a half-written file.

Every write goes to a temporary name beside its target, is flushed and ``fsync``-ed, then moved
over the target with one ``os.replace`` and the folder is ``fsync``-ed so the rename itself
survives a power loss. Temporary files are created with mode 0666 / 0777 so the process umask
decides who may read the result, as for any ordinary file (``mkstemp`` would force 0600).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def make_dirs(path: str | Path) -> Path:
    """``mkdir -p`` that names the problem when ``path`` is a file or not writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise CheckpointError(
            f"{path} (or a folder above it) exists and is not a folder; choose another output_dir"
        ) from e
    except PermissionError as e:
        raise CheckpointError(f"cannot create {path}: permission denied; choose a writable output_dir") from e
    if not os.access(path, os.W_OK):
        raise CheckpointError(f"{path} is not writable; choose a writable output_dir")
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)``, make it durable, then move it over ``path``."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = _tmp_name(path)
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # mode 0666 & ~umask
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_dir(path: str | Path, write: Callable[[Path], None]) -> None:
    """Write a whole folder beside ``path`` and swap it in (the old copy is removed afterwards)."""
    path = Path(path)
    make_dirs(path.parent)
    tmp = _tmp_name(path)
    os.mkdir(tmp, 0o777)  # mode 0777 & ~umask
    old = path.with_name(f".{path.name}.old")
    try:
        write(tmp)
        mode = 0o666 & ~_umask()
        for file in tmp.rglob("*"):
            if file.is_file():
                os.chmod(file, mode)  # writers such as safetensors create their files 0600
                _fsync_file(file)
        fsync_dir(tmp)
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    """Load trainer state without unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; start without --resume or point to a run directory")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt/unsafe files
        raise CheckpointError(f"checkpoint {path} is corrupt or not a jointtrain checkpoint: {e}") from e
