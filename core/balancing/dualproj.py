"""DualProj (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232, Sec. 5)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .method import Weighting, non_negative
from .solvers import project_dual_cone


class DualProj(Weighting):
    """The mean gradient projected onto the dual cone of the task gradients.

    ``w = argmin_{v >= 1/K} v^T G v``: the closest non-conflicting vector to the mean (in the
    paper's weighted sense, Prop. 1); unlike UPGrad it projects the average once instead of
    averaging K projections, so it is cheaper and not the mean when only some tasks conflict.

    Args:
        ridge: relative diagonal regulariser of the Jacobi-scaled Gramian (see :class:`UPGrad`).
    """

    cost: ClassVar[str] = "one NNLS of size K (scipy)"
    properties = frozenset({"non_conflicting", "permutation_invariant", "scale_invariant_weights", "mean_when_aligned"})

    def __init__(self, ridge: float = 1e-5) -> None:
        super().__init__()
        self.ridge = non_negative("DualProj", "ridge", ridge)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        return project_dual_cone(gramian, torch.full((1, k), 1.0 / k, dtype=torch.float64), self.ridge)[0]
