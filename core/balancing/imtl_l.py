"""IMTL-L, the loss half of impartial multi-task learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .base import BalancerSetup, LossBalancer, StepContext


class IMTLL(LossBalancer):
    """Learned loss scales that make every scaled loss stay near 1: ``sum_k e^(s_k) L_k - s_k``.

    Minimising over ``s_k`` gives ``e^(s_k) L_k = 1`` (the paper's Eq. 3), so no task dominates by
    its loss scale. ``s_k`` are parameters trained with the model (no weight decay); the applied
    weight is ``e^(s_k)``. Combine with a gradient-space method for the paper's full IMTL.

    Args:
        init: initial value of every ``s_k`` (0 -> weight 1).
    """

    state: ClassVar[str] = "K learned log-scales (parameters)"

    def __init__(self, init: float = 0.0) -> None:
        super().__init__()
        self.init = float(init)
        self.log_scales = nn.ParameterDict()

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        for t in setup.tasks:
            self.log_scales[t] = nn.Parameter(torch.tensor(self.init))

    def combine(self, losses: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        total = sum(torch.exp(self.log_scales[t]) * loss - self.log_scales[t] for t, loss in losses.items())
        return total, {t: float(torch.exp(self.log_scales[t].detach())) for t in losses}  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"init={self.init}"
