from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import vision  # noqa: F401  (registers the vision components)


@pytest.fixture(scope="package", autouse=True)
def _one_thread() -> Iterator[None]:
    """These tiny models are op-overhead bound: one thread is as fast, and OpenMP threads that
    spin-wait slow down many times over when the CPU is shared with other processes. Package
    scope: it also covers module-scoped fixtures, and other packages' tests keep their setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the session: each scene set is generated once, then read from disk."""
    return tmp_path_factory.mktemp("digit_scenes")
