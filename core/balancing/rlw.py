"""Random loss weighting (Lin et al., TMLR 2022, arXiv:2111.10603)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .base import LossBalancer, StepContext


class RandomLossWeighting(LossBalancer):
    """Each step, ``w = K * softmax(z)`` with ``z ~ N(0, I)`` (the paper's normal variant).

    Draws come from a private seeded generator whose state is checkpointed, so a resumed run
    draws the same weights; every DDP rank draws the same weights.

    Args:
        seed: generator seed.
    """

    randomized = True
    cost = "none (one K-dim normal draw per step)"
    state = "RNG"

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        z = torch.randn(len(losses), generator=self.generator)
        w = len(losses) * torch.softmax(z, 0)
        return {t: float(w[i]) for i, t in enumerate(losses)}

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"seed={self.seed}"
