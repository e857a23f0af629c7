"""STCH, smooth Tchebycheff scalarisation (Lin et al., ICML 2024, arXiv:2402.19078)."""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import Tensor

from ..errors import ConfigError
from .base import LossBalancer, StepContext
from .method import positive


class STCH(LossBalancer):
    """``mu log sum_k exp(l_k / mu)`` of the normalised losses ``l_k = L_k / r_k``: a smooth max.

    As ``mu -> 0`` it optimises the worst (normalised) task; as ``mu`` grows, their mean. The
    ideal point is 0 and ``r_k`` is task k's mean loss over its first ``warmup_steps`` steps (equal
    weights until then; the authors normalise by a nadir point from warm-up epochs). The gradient
    weights task k by ``softmax_k(l / mu) / r_k``, here times K so equal normalised losses weigh
    ``1 / r_k``. Backpropagated through that linearisation, with the coefficients from the
    detached, rank-averaged loss values (exact under DDP).

    Args:
        mu: smoothing (paper: 0.1-1 depending on the benchmark).
        warmup_steps: steps per task over which ``r_k`` is measured.
    """

    state: ClassVar[str] = "per-task loss sums and counts of the warm-up"

    def __init__(self, mu: float = 1.0, warmup_steps: int = 20) -> None:
        super().__init__()
        self.mu = positive("STCH", "mu", mu)
        if isinstance(warmup_steps, bool) or int(warmup_steps) != warmup_steps or warmup_steps < 1:
            raise ConfigError(f"STCH: warmup_steps must be an integer >= 1, got {warmup_steps}")
        self.warmup_steps = int(warmup_steps)
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        warming = [t for t in losses if self.counts.get(t, 0) < self.warmup_steps]
        for t in warming:
            self.sums[t] = self.sums.get(t, 0.0) + ctx.loss_values[t]
            self.counts[t] = self.counts.get(t, 0) + 1
        if warming:
            return {t: 1.0 for t in losses}
        ref = {t: max(self.sums[t] / self.counts[t], 1e-12) for t in losses}
        scaled = {t: ctx.loss_values[t] / ref[t] / self.mu for t in losses}
        top = max(scaled.values())
        exps = {t: math.exp(v - top) for t, v in scaled.items()}
        norm = sum(exps.values())
        return {t: len(losses) * exps[t] / norm / ref[t] for t in losses}

    def get_extra_state(self) -> dict[str, Any]:
        return {"sums": dict(self.sums), "counts": dict(self.counts)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.sums, self.counts = dict(state["sums"]), dict(state["counts"])

    def extra_repr(self) -> str:
        return f"mu={self.mu}, warmup_steps={self.warmup_steps}"
