"""Dynamic weight average (Liu, Johns & Davison, CVPR 2019, arXiv:1803.10704)."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from .base import BalancerSetup, LossBalancer, StepContext


class DynamicWeightAverage(LossBalancer):
    """``w_k = K * softmax_k(r_k / T)`` with ``r_k = Lbar_k(e-1) / Lbar_k(e-2)``.

    ``Lbar_k(e)`` is task k's mean loss over period ``e``. The paper's period is an epoch; here it
    is ``period`` steps (0 = the trainer's epoch, as the sampler defines it). Weights are 1 until
    a task has two finished periods.

    Args:
        temperature: softmax temperature T (paper: 2).
        period: steps per averaging period; 0 uses the epoch length.
    """

    state = "per-period loss sums and the last two period means"

    def __init__(self, temperature: float = 2.0, period: int = 0) -> None:
        super().__init__()
        self.temperature = temperature
        self.period = period
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.history: dict[str, list[float]] = {}  # the last two finished period means
        self.steps_in_period = 0

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        if self.period <= 0:
            self.period = max(1, setup.steps_per_epoch)

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        ratios = {t: h[-1] / max(h[-2], 1e-12) for t in losses if len(h := self.history.get(t, [])) == 2}
        if len(ratios) == len(losses):
            exps = {t: math.exp(r / self.temperature) for t, r in ratios.items()}
            norm = sum(exps.values())
            weights: dict[str, float] = {t: len(losses) * e / norm for t, e in exps.items()}
        else:
            weights = {t: 1.0 for t in losses}
        self._observe(ctx.loss_values)
        return weights  # type: ignore[return-value]

    def _observe(self, values: dict[str, float]) -> None:
        for t, v in values.items():
            self.sums[t] = self.sums.get(t, 0.0) + v
            self.counts[t] = self.counts.get(t, 0) + 1
        self.steps_in_period += 1
        if self.steps_in_period >= self.period:
            for t, total in self.sums.items():
                self.history[t] = ([*self.history.get(t, []), total / self.counts[t]])[-2:]
            self.sums, self.counts, self.steps_in_period = {}, {}, 0

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "sums": dict(self.sums),
            "counts": dict(self.counts),
            "history": {k: list(v) for k, v in self.history.items()},
            "steps_in_period": self.steps_in_period,
            "period": self.period,
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.steps_in_period, self.period = int(state["steps_in_period"]), int(state["period"])

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, period={self.period}"
