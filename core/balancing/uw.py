"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018, arXiv:1705.07115)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import BalancerSetup, LossBalancer, StepContext


class UncertaintyWeighting(LossBalancer):
    """Learned homoscedastic uncertainty per task: ``sum_k 0.5 * exp(-s_k) * L_k + 0.5 * s_k``.

    ``s_k = log sigma_k^2`` are parameters trained with the model (the trainer adds them to the
    optimizer without weight decay); the applied weight is ``0.5 * exp(-s_k)``.

    Args:
        init: initial value of every ``s_k`` (0 -> weight 0.5).
    """

    state = "K log-variances (parameters)"
    host_values = False  # weights and regulariser stay on the device

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.init = init
        self.log_vars = nn.ParameterDict()

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        for t in setup.tasks:
            self.log_vars[t] = nn.Parameter(torch.tensor(float(self.init)))

    def combine(self, losses: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, Tensor]]:
        # ``losses`` holds the tasks labelled this step: an unlabelled task's log-variance gets no gradient
        total = sum(0.5 * torch.exp(-s) * loss + 0.5 * s for t, loss in losses.items() for s in [self.log_vars[t]])
        return total, {t: 0.5 * torch.exp(-self.log_vars[t].detach()) for t in losses}  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"init={self.init}"
