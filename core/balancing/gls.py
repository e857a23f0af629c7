"""Geometric loss strategy (Chennupati et al., CVPR Workshops 2019, arXiv:1904.08492)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import LossBalancer, StepContext


class GeometricLossStrategy(LossBalancer):
    """``L = (prod_k L_k)^(1/K)``, computed as ``exp(mean_k log L_k)`` for stability.

    Its gradient weights task k by ``L / (K * L_k)``, which is what is reported as the weight.
    Losses must be positive (true of cross-entropy, MSE, focal...).
    """

    def combine(self, losses: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        stacked = torch.stack([losses[t] for t in losses]).clamp_min(1e-12)
        total = torch.exp(torch.log(stacked).mean())
        weights = (total / (len(losses) * stacked)).detach()
        return total, {t: float(weights[i]) for i, t in enumerate(losses)}
