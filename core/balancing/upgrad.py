"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .method import Weighting, non_negative
from .solvers import project_dual_cone


class UPGrad(Weighting):
    """Projects each task gradient onto the dual cone of all of them and averages the projections.

    The weights are ``sum_i v_i`` with ``v_i = argmin_{v >= e_i / K} v^T G v`` (the paper's Prop. 1),
    solved exactly by NNLS on a factor of the Jacobi-scaled, trace-normalised Gramian. The update is
    non-conflicting (``J J^T w >= 0``) and equals the mean gradient when no two tasks conflict.

    On a rank-deficient Gramian the QP has a whole face of minimisers; ``ridge * I`` added to the
    cosine matrix (relative to each task's own norm; torchjd adds 1e-4 to the trace-normalised Gramian) picks the
    minimum-norm one, so the weights stay bounded, permutation-invariant and stable from float32 to
    float64 inputs. A zero row (a task whose gradient is exactly 0 this step) gets its bound ``1/K``
    and leaves the other rows' weights as they are without it, whatever the row order.

    Args:
        ridge: relative diagonal regulariser of the Jacobi-scaled Gramian (0 = exact, unregularised QP).
    """

    cost: ClassVar[str] = "K NNLS of size K (scipy)"
    properties = frozenset({"non_conflicting", "permutation_invariant", "scale_invariant_weights", "mean_when_aligned"})

    def __init__(self, ridge: float = 1e-5) -> None:
        super().__init__()
        self.ridge = non_negative("UPGrad", "ridge", ridge)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        return project_dual_cone(gramian, torch.eye(k, dtype=torch.float64) / k, self.ridge).sum(0)
