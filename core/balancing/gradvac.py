"""Gradient Vaccine (Wang et al., ICLR 2021, arXiv:2010.05874)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Weighting, grow_square, in_range


class GradVac(Weighting):
    """PCGrad generalised to a target similarity: each task pair (i, j) keeps an EMA ``phi_ij`` of
    its cosine; when the (projected) ``g_i`` has ``cos(g_i, g_j) < phi_ij``, ``g_i`` gains the
    multiple of ``g_j`` that brings the cosine to ``phi_ij`` (the paper's Eq. 3):
    ``g_i += |g_i| (phi_ij sqrt(1 - c^2) - c sqrt(1 - phi_ij^2)) / (|g_j| sqrt(1 - phi_ij^2)) g_j``.
    Then ``phi_ij <- (1 - beta) phi_ij + beta c``. Pairs are visited in a random order of j for
    each i, and the update is the sum of the modified gradients. The targets start at 0 (PCGrad).

    Cosines and targets are clamped to [-1, 1]: a float32 Gramian of collinear gradients can give
    ``|cos|`` slightly above 1, where ``sqrt(1 - cos^2)`` is not real.

    Args:
        beta: EMA rate of the target similarities (paper: 1e-2).
        seed: seed of the private generator drawing the orders (checkpointed).
    """

    cost: ClassVar[str] = "O(K^3) scalar work"
    randomized: ClassVar[bool] = True
    state: ClassVar[str] = "K x K target cosines, RNG"

    def __init__(self, beta: float = 0.01, seed: int = 0) -> None:
        super().__init__()
        self.beta, self.seed = in_range("GradVac", "beta", beta, 0.0, 1.0), int(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.targets = torch.zeros(0, 0, dtype=torch.float64)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k, index = gramian.shape[0], rows
        self.targets = grow_square(self.targets, max(index) + 1)
        coef = torch.eye(k, dtype=gramian.dtype)  # row i: g_i (modified) as a combination of the rows of J
        for i in range(k):
            for j in torch.randperm(k, generator=self.generator).tolist():
                if j == i:
                    continue
                norm_i = float((coef[i] @ gramian @ coef[i]).clamp_min(0).sqrt())
                norm_j = float(gramian[j, j].clamp_min(0).sqrt())
                if norm_i == 0 or norm_j == 0:
                    continue
                cos = min(max(float(coef[i] @ gramian[:, j]) / (norm_i * norm_j), -1.0), 1.0)
                target = min(max(float(self.targets[index[i], index[j]]), -1.0), 1.0)
                if cos < target:
                    coef[i, j] += (
                        norm_i
                        * (target * (1 - cos**2) ** 0.5 - cos * (1 - target**2) ** 0.5)
                        / (norm_j * max((1 - target**2) ** 0.5, 1e-12))
                    )
                self.targets[index[i], index[j]] = (1 - self.beta) * target + self.beta * cos
        return coef.sum(0)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "targets": self.targets.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.targets = state["targets"].double().clone()
