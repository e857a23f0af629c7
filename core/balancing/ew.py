"""Static task weights: equal, user-given, or from a heuristic."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..errors import ConfigError
from .base import BalancerSetup, LossBalancer, StepContext, normalise

HEURISTICS = ("config", "uniform", "size", "inverse_initial_loss")


class EqualWeighting(LossBalancer):
    """Fixed weights ``w_k``; ``sum_k w_k L_k``.

    Args:
        weights: explicit per-task weights; overrides ``heuristic``.
        heuristic: where the weights come from when not given:
            ``config`` (each task's ``weight``, default 1), ``uniform`` (all 1),
            ``size`` (proportional to the task's labelled training examples),
            ``inverse_initial_loss`` (``1 / L_k`` at the task's first step, so every task starts at a
            weighted loss 1). ``size`` weights are normalised to sum to K.
    """

    def __init__(self, weights: dict[str, float] | None = None, heuristic: str = "config") -> None:
        super().__init__()
        if heuristic not in HEURISTICS:
            raise ConfigError(f"unknown weight heuristic '{heuristic}'; valid: {', '.join(HEURISTICS)}")
        self.given = dict(weights) if weights else None
        self.heuristic = heuristic
        self.fixed: dict[str, float] = {}

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        if self.given is not None:
            missing = [t for t in setup.tasks if t not in self.given]
            if missing:
                raise ConfigError(f"balancing weights miss tasks {missing}; give one weight per task")
            self.fixed = dict(self.given)
        elif self.heuristic == "config":
            self.fixed = dict(setup.task_weights)
        elif self.heuristic == "uniform":
            self.fixed = {t: 1.0 for t in setup.tasks}
        elif self.heuristic == "size":
            self.fixed = normalise({t: float(setup.dataset_sizes[t]) for t in setup.tasks})

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        for t in losses:  # only inverse_initial_loss leaves weights to a task's first step
            if t not in self.fixed:
                self.fixed[t] = 1.0 / max(ctx.loss_values[t], 1e-12)
        return {t: self.fixed[t] for t in losses}

    def get_extra_state(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fixed = dict(state["fixed"])

    def extra_repr(self) -> str:
        return f"weights={self.given}, heuristic={self.heuristic!r}"
