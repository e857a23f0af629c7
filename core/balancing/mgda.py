"""MGDA (Désidéri 2012) as multi-task learning: MGDA-UB (Sener & Koltun, NeurIPS 2018, arXiv:1810.04650)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from .gradient import GramianBalancer
from .solvers import min_norm_simplex


class MGDA(GramianBalancer):
    """The min-norm element of the convex hull of the task gradients.

    ``w = argmin_{w >= 0, sum w = 1} |J^T w|^2``; the update ``J^T w`` decreases every task to first
    order (it is zero only at a Pareto-stationary point). ``space='rep'`` is the paper's MGDA-UB.
    The simplex QP is solved exactly (one NNLS, :func:`solvers.min_norm_simplex`) instead of the
    paper's Frank-Wolfe iterations; both converge to the same weights.

    Args:
        space: ``rep`` or ``params`` (see :class:`GradientBalancer`).
        engine: how ``params`` computes task gradients.
    """

    cost: ClassVar[str] = "K x K Gramian + one K x K NNLS (scipy); no extra backward beyond the engine's"

    def __init__(self, space: str = "params", engine: str = "auto") -> None:
        super().__init__(space, engine)

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        return min_norm_simplex(gramian)
