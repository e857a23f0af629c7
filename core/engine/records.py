"""The loop's log records: a step's values read back at log steps, and a new run's setup record."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..balancing import Balancer
from ..config import TrainConfig
from ..distributed import DistEnv
from ..sampling import TaskSampler


def host_record(record: dict[str, Any], *diagnosed: Any) -> dict[str, Any]:
    """A step record with its device values read back in one host sync (log steps only) and the
    ``diagnostics()`` of ``diagnosed`` (balancer, architecture) added. A task unlabelled all step
    (a NaN loss) is left out."""
    for part in diagnosed:
        record = {**record, **part.diagnostics()}
    keys = [k for k, v in record.items() if isinstance(v, torch.Tensor)]
    if keys:
        read = torch.stack([record[k].detach().double().reshape(()) for k in keys]).tolist()
        record = {**record, **dict(zip(keys, read, strict=True))}
    return {k: v for k, v in record.items() if not (k.startswith("loss/") and math.isnan(v))}


def setup_record(
    tasks: list[str],
    sampler: TaskSampler,
    balancer: Balancer,
    env: DistEnv,
    strategy: str,
    amp: torch.dtype | None,
    config: TrainConfig,
) -> dict[str, Any]:
    """The first record of a new run: what trains, on what, how."""
    return {
        "split": "setup",
        "step": 0,
        "tasks": tasks,
        "sampler": sampler.describe(),
        "balancer": repr(balancer),
        "world_size": env.world_size,
        "strategy": strategy,
        "device": str(env.device),
        "amp": str(amp),
        "config": dataclasses.asdict(config),
    }
