"""MGDA, the multiple-gradient descent algorithm (Désidéri 2012; Sener & Koltun, NeurIPS 2018, arXiv:1810.04650)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from .method import Weighting
from .solvers import min_norm_simplex


class MGDA(Weighting):
    """The min-norm point of the convex hull of the task gradients.

    ``w = argmin_{w >= 0, sum w = 1} |J^T w|^2``; the update ``J^T w`` decreases every task to first
    order (it is zero only at a Pareto-stationary point). ``space='rep'`` is the paper's MGDA-UB.
    The simplex QP is solved exactly (one NNLS, :func:`solvers.min_norm_simplex`) instead of the
    paper's Frank-Wolfe iterations; both converge to the same weights.
    """

    cost: ClassVar[str] = "one K x K NNLS (scipy)"
    properties = frozenset({"non_conflicting", "permutation_invariant", "scale_invariant_weights"})

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        return min_norm_simplex(gramian)
