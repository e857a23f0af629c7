"""UPGrad (Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization", arXiv:2406.16232)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .gradient import GramianBalancer
from .solvers import project_dual_cone


class UPGrad(GramianBalancer):
    """Projects each task gradient onto the dual cone of all of them and averages the projections.

    The weights are ``sum_i v_i`` with ``v_i = argmin_{v >= e_i / K} v^T G v`` (the paper's Prop. 1),
    solved exactly by NNLS on a factor of the trace-normalised Gramian. The update is
    non-conflicting (``J J^T w >= 0``) and equals the mean gradient when no two tasks conflict.
    torchjd adds ``1e-4 I`` to the normalised Gramian before its QP; this implementation does not
    (the difference is below 1e-3 on well-conditioned Jacobians).

    Args:
        space: ``rep`` or ``params``.
        engine: how ``params`` computes task gradients.
    """

    cost: ClassVar[str] = "K x K Gramian + K NNLS of size K (scipy); no extra backward"

    def __init__(self, space: str = "params", engine: str = "auto") -> None:
        super().__init__(space, engine)

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        k = gramian.shape[0]
        return project_dual_cone(gramian, torch.eye(k, dtype=torch.float64) / k).sum(0)
