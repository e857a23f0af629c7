"""The loop's log records: a step's, read back at log steps, and a new run's setup record."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ..balancing import Balancer
from ..config import TrainConfig
from ..distributed import DistEnv
from ..model import JointModel
from ..sampling import TaskSampler
from .precision import Precision
from .strategy import Strategy


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


def step_record(
    losses: dict[str, Any], weights: dict[str, Any], lr: float, grad_norm: torch.Tensor | None
) -> dict[str, Any]:
    """A step's record: each task's loss and weight, the learning rate, the gradient norm when clipped."""
    record: dict[str, Any] = {f"loss/{t}": v for t, v in losses.items()}
    record.update({f"weight/{t}": w for t, w in weights.items()})
    record["lr"] = lr
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    return record


def setup_record(
    model: JointModel,
    sampler: TaskSampler,
    balancer: Balancer,
    env: DistEnv,
    strategy: Strategy,
    precision: Precision,
    config: TrainConfig,
) -> dict[str, Any]:
    """The first record of a new run: what trains, on what, how."""
    return {
        "split": "setup",
        "step": 0,
        "tasks": list(model.tasks),
        "sampler": sampler.describe(),
        "balancer": repr(balancer),
        "world_size": env.world_size,
        "strategy": strategy.name,
        "device": str(env.device),
        "amp": str(precision.dtype),
        "config": dataclasses.asdict(config),
    }
