"""Static task weights: equal, user-given, or from a heuristic."""

from __future__ import annotations

import math
from typing import Any

import torch
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
    host_values = False  # the heuristics' state is kept as device tensors: no host sync per step

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
        # per task (setup's order), on the loss's device: inverse_initial_loss weights (NaN = not
        # seen yet) and loss_scale's running sums and counts
        self.initial = torch.empty(0)
        self.scale_sums = torch.empty(0)
        self.scale_counts = torch.empty(0)

    @property
    def accumulates_linearly(self) -> bool:  # type: ignore[override]
        """Fixed weights: each micro-batch can be backpropagated as it comes."""
        return self.given is not None or self.heuristic in ("config", "uniform", "size")

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        k = len(setup.tasks)
        self.initial = torch.full((k,), math.nan, dtype=torch.float64)
        self.scale_sums = torch.zeros(k, dtype=torch.float64)
        self.scale_counts = torch.zeros(k, dtype=torch.float64)
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
        if self.fixed:
            return {t: self.fixed[t] for t in losses}
        device = next(iter(losses.values())).device
        rows = [self.tasks.index(t) for t in losses]
        values = torch.stack([torch.as_tensor(ctx.loss_values[t], device=device) for t in losses]).double()
        seen = torch.isfinite(values)  # a skipped step's value does not count
        if self.heuristic == "loss_scale":
            return self._loss_scale(losses, rows, values, seen)
        initial = self.initial.to(device)
        current = initial[rows]
        initial[rows] = torch.where(seen & torch.isnan(current), 1.0 / values.clamp_min(1e-12), current)
        self.initial = initial
        weights = initial[rows].nan_to_num(0.0).float()  # not seen yet: its loss is an exact zero this step
        return {t: weights[i] for i, t in enumerate(losses)}

    def _loss_scale(
        self, losses: dict[str, Tensor], rows: list[int], values: Tensor, seen: Tensor
    ) -> dict[str, Tensor]:
        sums, counts = self.scale_sums.to(values.device), self.scale_counts.to(values.device)
        take = seen & (counts[rows] < self.scale_steps)
        sums[rows] += torch.where(take, values, 0.0)
        counts[rows] += take.double()
        self.scale_sums, self.scale_counts = sums, counts
        # normalised over every task seen so far, so a task's weight does not depend on which
        # tasks happen to be in this step's batch (the one-dataset-per-task regime)
        known = counts > 0
        inverse = torch.where(known, counts / sums.clamp_min(1e-12), 0.0)
        scaled = (known.sum() * inverse / inverse.sum().clamp_min(1e-300))[rows].float()
        return {t: scaled[i] for i, t in enumerate(losses)}

    def get_extra_state(self) -> dict[str, Any]:  # host reads: checkpoints only
        return {
            "fixed": dict(self.fixed),
            "initial": [None if math.isnan(v) else v for v in self.initial.tolist()],  # None: not seen yet
            "scale_sums": self.scale_sums.tolist(),
            "scale_counts": self.scale_counts.tolist(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.fixed = dict(state["fixed"])
        for key in ("initial", "scale_sums", "scale_counts"):
            if key in state:
                values = [math.nan if v is None else v for v in state[key]]
                setattr(self, key, torch.tensor(values, dtype=torch.float64))

    def extra_repr(self) -> str:
        scale = f", scale_steps={self.scale_steps}" if self.heuristic == "loss_scale" else ""
        return f"weights={self.given}, heuristic={self.heuristic!r}{scale}"
