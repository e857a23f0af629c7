"""FairGrad, fair resource allocation in multi-task learning (Ban & Ji, ICML 2024, arXiv:2402.15638)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from .method import Weighting, non_negative, positive_int
from .solvers import scipy_optimize


class FairGrad(Weighting):
    """alpha-fair utilities of the tasks' first-order improvements: ``G w = w^(-1/alpha)``, ``w > 0``.

    The paper's Eq. 4 (Algorithm 1): maximising ``sum_k u_k^(1-alpha) / (1-alpha)`` with
    ``u_k = g_k . d`` gives ``d = J^T w`` with ``(G w)_k = w_k^(-1/alpha)``. ``alpha = 0`` is linear
    scalarisation (uniform weights), ``alpha = 1`` proportional fairness (Nash-MTL's condition),
    ``alpha -> inf`` max-min fairness. Solved as the authors do, with scipy's bounded
    ``least_squares`` from uniform weights.

    Args:
        alpha: fairness exponent (paper: 1 or 2 on most benchmarks).
        max_iter: function evaluations of the solver.
    """

    cost: ClassVar[str] = "a K-variable bounded least squares (scipy)"
    properties = frozenset({"permutation_invariant"})

    def __init__(self, alpha: float = 1.0, max_iter: int = 100) -> None:
        super().__init__()
        self.alpha = non_negative("FairGrad", "alpha", alpha)
        self.max_iter = positive_int("FairGrad", "max_iter", max_iter)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        uniform = np.full(k, 1.0 / k)
        if self.alpha == 0:
            return torch.from_numpy(uniform)
        g = gramian.numpy()

        def residual(w: np.ndarray) -> np.ndarray:
            return g @ w - np.power(np.maximum(w, 1e-300), -1.0 / self.alpha)

        result = scipy_optimize().least_squares(residual, uniform, bounds=(0, np.inf), max_nfev=self.max_iter * k)
        return torch.from_numpy(result.x)
