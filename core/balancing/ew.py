"""Static task weights: equal, user-given, or from a heuristic."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..errors import ConfigError
from .base import BalancerSetup, LossBalancer, StepContext, normalise

HEURISTICS = ("config", "uniform", "size", "inverse_initial_loss", "loss_scale")


class EqualWeighting(LossBalancer):
    """Fixed weights ``w_k``; ``sum_k w_k L_k``.

    Args:
        weights: explicit per-task weights; overrides ``heuristic``.
        heuristic: where the weights come from when not given:
            ``config`` (each task's ``weight``, default 1), ``uniform`` (all 1),
            ``size`` (proportional to the task's labelled training examples),
            ``inverse_initial_loss`` (``1 / L_k`` at the task's first step, so every task starts at a
            weighted loss 1), ``loss_scale`` (``1 / mean L_k`` over the task's first ``scale_steps``
            steps: the same idea, robust to one unlucky first batch; until then the weights follow the
            running mean). ``size`` and ``loss_scale`` weights are normalised to sum to K.
        scale_steps: steps over which ``loss_scale`` measures each task's loss scale.
    """

    state = "weights fixed at a task's first step (inverse_initial_loss), loss-scale sums"

    def __init__(
        self, weights: dict[str, float] | None = None, heuristic: str = "config", scale_steps: int = 20
    ) -> None:
        super().__init__()
        if heuristic not in HEURISTICS:
            raise ConfigError(f"unknown weight heuristic '{heuristic}'; valid: {', '.join(HEURISTICS)}")
        if scale_steps < 1:
            raise ConfigError(f"scale_steps must be >= 1, got {scale_steps}")
        self.given = dict(weights) if weights else None
        self.heuristic = heuristic
        self.scale_steps = scale_steps
        self.fixed: dict[str, float] = {}
        self.scale_sums: dict[str, float] = {}  # loss_scale: running sums and counts per task
        self.scale_counts: dict[str, int] = {}

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
        if self.heuristic == "loss_scale" and self.given is None:
            return self._loss_scale(losses, ctx)  # type: ignore[return-value]
        for t in losses:  # only inverse_initial_loss leaves weights to a task's first step
            if t not in self.fixed:
                self.fixed[t] = 1.0 / max(ctx.loss_values[t], 1e-12)
        return {t: self.fixed[t] for t in losses}

    def _loss_scale(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        for t in losses:
            if self.scale_counts.get(t, 0) < self.scale_steps:
                self.scale_sums[t] = self.scale_sums.get(t, 0.0) + ctx.loss_values[t]
                self.scale_counts[t] = self.scale_counts.get(t, 0) + 1
        # normalised over every task seen so far, so a task's weight does not depend on which
        # tasks happen to be in this step's batch (the one-dataset-per-task regime)
        inverse = {t: self.scale_counts[t] / max(s, 1e-12) for t, s in self.scale_sums.items()}
        scaled = normalise(inverse)
        return {t: scaled[t] for t in losses}

    def get_extra_state(self) -> dict[str, Any]:
        return {"fixed": dict(self.fixed), "scale_sums": dict(self.scale_sums), "scale_counts": dict(self.scale_counts)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fixed = dict(state["fixed"])
        self.scale_sums = dict(state.get("scale_sums", {}))
        self.scale_counts = dict(state.get("scale_counts", {}))

    def extra_repr(self) -> str:
        scale = f", scale_steps={self.scale_steps}" if self.heuristic == "loss_scale" else ""
        return f"weights={self.given}, heuristic={self.heuristic!r}{scale}"
