"""Optimizers and learning-rate schedules, by name."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .registry import Registry

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")
SCHEDULES: Registry[Callable[[int], float]] = Registry("schedule")


@OPTIMIZERS.register("adamw")
def adamw(
    params: Iterable[Any], lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.999)
) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=tuple(betas))


@OPTIMIZERS.register("sgd")
def sgd(
    params: Iterable[Any], lr: float, weight_decay: float, momentum: float = 0.9, nesterov: bool = True
) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov and momentum > 0
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
