"""Optimizers and learning-rate schedules, by name.

An optimizer is a component like any other: ``train.optimizer: {name: adamw, betas: [0.9, 0.95]}``
or any ``torch.optim`` class by import path (``{name: "torch.optim:RAdam", decoupled_weight_decay: true}``).
The parameter groups come from the model's own shared / task partition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..balancing import Balancer
from ..config import TrainConfig
from ..model import JointModel
from ..registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULES: Registry[Callable[[int], float]] = Registry("schedule")


@OPTIMIZERS.register("adamw")
def adamw(
    params: Iterable[Any],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """``fused``: one kernel per step that can also skip a non-finite step on the device (core.engine.skip)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, fused=fused)


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[Any],
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    fused: bool = True,
) -> torch.optim.Optimizer:
    """``fused``: as for ``adamw``."""
    return torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov and momentum > 0, fused=fused
    )


def _warmup(step: int, warmup: int) -> float | None:
    return (step + 1) / warmup if step < warmup else None


@SCHEDULES.register("constant")
def constant(total: int, warmup: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    return lambda step: _warmup(step, warmup) or 1.0


@SCHEDULES.register("cosine")
def cosine(total: int, warmup: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    def factor(step: int) -> float:
        w = _warmup(step, warmup)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@SCHEDULES.register("linear")
def linear(total: int, warmup: int = 0, min_ratio: float = 0.0) -> Callable[[int], float]:
    def factor(step: int) -> float:
        w = _warmup(step, warmup)
        if w is not None:
            return w
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return 1 - (1 - min_ratio) * progress

    return factor


def build_optimizer(model: JointModel, balancer: Balancer, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer over the model's groups and the balancer's learned weights (never decayed)."""
    groups = model.parameter_groups(config.lr, config.head_lr_scale)
    balancer_params = [p for p in balancer.parameters() if p.requires_grad]
    if balancer_params:
        groups.append({"params": balancer_params, "weight_decay": 0.0})
    return OPTIMIZERS.build(config.optimizer_spec, params=groups, lr=config.lr, weight_decay=config.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    factor = SCHEDULES.build(
        config.schedule, total=config.max_steps, warmup=config.warmup_steps, min_ratio=config.min_lr_ratio
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
