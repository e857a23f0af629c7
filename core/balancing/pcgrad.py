"""PCGrad, projecting conflicting gradients (Yu et al., NeurIPS 2020, arXiv:2001.06782)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Weighting


class PCGrad(Weighting):
    """For each task i, in a random order of the others j: if ``g_i . g_j < 0``, remove from the
    (already projected) ``g_i`` its component along ``g_j``; the update is the sum of the projected
    gradients (the paper's Algorithm 1). Every projection keeps the vector a combination of the
    rows, so the method is a function of the Gramian. K = 2 is deterministic.

    Args:
        seed: seed of the private generator drawing the orders (checkpointed; same on all ranks).
    """

    cost: ClassVar[str] = "O(K^3) scalar work"
    randomized: ClassVar[bool] = True
    state: ClassVar[str] = "RNG"
    properties = frozenset({"linear_under_scaling", "mean_when_aligned"})

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        total = torch.zeros(k, dtype=gramian.dtype)
        for i in range(k):
            coef = torch.zeros(k, dtype=gramian.dtype)
            coef[i] = 1.0
            for j in torch.randperm(k, generator=self.generator).tolist():
                dot = gramian[j] @ coef
                if j != i and dot < 0 and gramian[j, j] > 0:
                    coef[j] -= dot / gramian[j, j]
            total += coef
        return total

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
