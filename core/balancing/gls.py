"""Geometric loss strategy (Chennupati et al., CVPR Workshops 2019, arXiv:1904.08492)."""

from __future__ import annotations

import math

from torch import Tensor

from .base import LossBalancer, StepContext


class GeometricLossStrategy(LossBalancer):
    """``L = (prod_k L_k)^(1/K)``: its gradient weights task k by ``L / (K * L_k)``.

    The loss is backpropagated through that linearisation, with the coefficients taken from the
    detached, rank-averaged loss values: the same gradient as the geometric mean in one process,
    and exact under DDP (where each rank's ``L_k`` is only its share of the global loss).
    Losses must be positive (true of cross-entropy, MSE, focal...).
    """

    def combine(self, losses: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        values = {t: max(ctx.loss_values[t], 1e-12) for t in losses}
        geometric = math.exp(sum(math.log(v) for v in values.values()) / len(values))
        weights = {t: geometric / (len(values) * v) for t, v in values.items()}
        return sum(weights[t] * losses[t] for t in losses), weights  # type: ignore[return-value]
