"""Seeding and the per-rank RNG state a checkpoint carries, so a resumed run draws the same numbers.

Every rank draws its own dropout / augmentation stream (seeded with ``seed + rank``), so a
checkpoint holds one state per rank (gathered to rank 0, which writes it) and each rank restores
its own. Only the trainer's device's CUDA generator is saved and restored: another process's set
of visible GPUs may differ.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and (on a CUDA ``device``) that device's generator state."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"] is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def restore_rank_rng(states: list[dict[str, Any]], rank: int, device: torch.device, seed: int, step: int) -> None:
    """Restore rank ``rank``'s saved state; a rank the checkpoint has none for (the run resumes on
    more ranks than it was saved from) gets a fresh stream derived from seed, rank and step."""
    if rank < len(states):
        set_rng_state(states[rank], device)
        return
    warnings.warn(
        f"the checkpoint holds RNG states of {len(states)} rank(s); rank {rank} starts a new stream "
        "(the run continues, but not exactly as an uninterrupted one would)",
        RuntimeWarning,
        stacklevel=2,
    )
    seed_everything(seed + rank + 1_000_003 * step)
