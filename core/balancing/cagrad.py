"""CAGrad, conflict-averse gradient descent (Liu et al., NeurIPS 2021, arXiv:2110.14048)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from .method import Weighting, non_negative, positive
from .solvers import normalized, scipy_optimize


class CAGrad(Weighting):
    """``max_d min_i g_i . d`` within a ball around the mean gradient ``g0``: ``|d - g0| <= c |g0|``.

    Dual (the paper's Eq. 4): ``w = argmin_{w in simplex} g_w . g0 + sqrt(phi) |g_w|`` with
    ``g_w = J^T w``, ``phi = c^2 |g0|^2``; then ``d = g0 + sqrt(phi) / |g_w| g_w``, divided by
    ``1 + c^2`` when ``rescale`` (the authors' code default). ``g0`` is the *mean* of the rows, so
    the weights are ``1/K + sqrt(phi)/|g_w| w``. Solved on the trace-normalised Gramian with scipy
    SLSQP, as the authors do. torchjd's CAGrad is this with ``rescale=False``.

    When ``|g_w|`` vanishes the point is Pareto-stationary (0 is in the rows' convex hull), so
    ``min_i g_i . d <= 0`` for every d. With ``c >= 1`` the ball contains ``d = 0``, which attains
    that maximum: the update is 0. With ``c < 1`` the mean ``g0`` is returned (feasible; the exact
    optimum would need the direction of a vanishing ``g_w``).

    Args:
        c: radius of the ball, relative to ``|g0|`` (paper: 0.4 on NYUv2; 0 = mean gradient).
        rescale: divide the update by ``1 + c^2`` (authors' code).
        norm_eps: below this ``|g_w|`` (on the trace-normalised Gramian) the point is treated as
            Pareto-stationary.
    """

    cost: ClassVar[str] = "a K-variable SLSQP (scipy)"
    properties = frozenset({"permutation_invariant", "scale_invariant_weights"})

    def __init__(self, c: float = 0.4, rescale: bool = True, norm_eps: float = 1e-4) -> None:
        super().__init__()
        self.c = non_negative("CAGrad", "c", c)
        self.rescale = bool(rescale)
        self.norm_eps = positive("CAGrad", "norm_eps", norm_eps)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        g = normalized(gramian)
        mean = np.full(k, 1.0 / k)
        b = g @ mean  # g_w . g0 = w^T G 1/K
        sqrt_phi = self.c * float(np.sqrt(max(mean @ g @ mean, 0.0)))

        def objective(w: np.ndarray) -> tuple[float, np.ndarray]:
            norm = float(np.sqrt(max(w @ g @ w, 1e-20)))
            return float(b @ w + sqrt_phi * norm), b + sqrt_phi * (g @ w) / norm

        result = scipy_optimize().minimize(
            objective,
            mean,
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=({"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)},),
            options={"ftol": 1e-14, "maxiter": 500},
        )
        w = np.clip(result.x, 0.0, None)
        g_w_norm = float(np.sqrt(max(w @ g @ w, 0.0)))
        if g_w_norm >= self.norm_eps:
            weights = mean + (sqrt_phi / g_w_norm) * w
        else:  # Pareto-stationary: see the class docstring
            weights = np.zeros(k) if self.c >= 1 else mean
        if self.rescale:
            weights = weights / (1 + self.c**2)
        return torch.from_numpy(weights)
