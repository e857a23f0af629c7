"""Nash-MTL, multi-task learning as a bargaining game (Navon et al., ICML 2022, arXiv:2202.01017)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Weighting, non_negative, positive_int


class NashMTL(Weighting):
    """The Nash bargaining solution: ``alpha > 0`` with ``G alpha = 1 / alpha`` (element-wise).

    As in the authors' code, ``G`` is first divided by its Frobenius norm, the weights ``alpha``
    are applied to the raw gradients, and the update is clipped to norm ``max_norm``. The system
    is the optimality condition of the strictly convex ``1/2 a^T G a - sum log a``, solved here by
    damped Newton to machine precision (no cvxpy; the authors run 20 convex-concave iterations).
    A ``ridge * I`` (relative to the normalised Gramian) keeps the problem bounded when a positive
    combination of gradients vanishes (exactly opposed tasks), where no solution exists.

    Args:
        max_norm: clip ``|J^T alpha|`` to this value; 0 disables (authors: 1.0).
        update_weights_every: re-solve every this many steps, reuse the weights in between.
        ridge: diagonal regulariser of the normalised Gramian.
        max_iter: Newton iterations.
    """

    cost: ClassVar[str] = "a K-variable Newton solve"
    state: ClassVar[str] = "the last weights (reused between solves)"
    properties = frozenset({"permutation_invariant"})

    def __init__(
        self, max_norm: float = 1.0, update_weights_every: int = 1, ridge: float = 1e-8, max_iter: int = 100
    ) -> None:
        super().__init__()
        self.max_norm = non_negative("NashMTL", "max_norm", max_norm)
        self.update_weights_every = positive_int("NashMTL", "update_weights_every", update_weights_every)
        self.ridge = non_negative("NashMTL", "ridge", ridge)
        self.max_iter = positive_int("NashMTL", "max_iter", max_iter)
        self.calls = 0
        self.alpha = torch.zeros(0, dtype=torch.float64)

    def solve(self, gramian: Tensor) -> Tensor:
        """``alpha > 0`` with ``G alpha = 1 / alpha`` for a normalised Gramian."""
        k = gramian.shape[0]
        g = gramian + self.ridge * torch.eye(k, dtype=gramian.dtype)
        alpha = torch.ones(k, dtype=gramian.dtype) / max(float(g.sum().clamp_min(1e-12).sqrt()), 1e-6)

        def value(a: Tensor) -> float:
            return float(0.5 * a @ g @ a - torch.log(a).sum())

        for _ in range(self.max_iter):
            grad = g @ alpha - 1 / alpha
            if float(grad.norm()) < 1e-12 * max(1.0, float((1 / alpha).norm())):
                break
            step = torch.linalg.solve(g + torch.diag(1 / alpha**2), grad)
            t, current = 1.0, value(alpha)
            while t > 1e-12:  # backtracking: stay positive and decrease the objective
                candidate = alpha - t * step
                if bool((candidate > 0).all()) and value(candidate) <= current - 1e-4 * t * float(grad @ step):
                    break
                t /= 2
            alpha = alpha - t * step
        return alpha

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        if self.calls % self.update_weights_every == 0 or self.alpha.shape[0] != k:
            norm = gramian.norm()
            self.alpha = self.solve(gramian / norm) if norm > 0 else torch.ones(k, dtype=gramian.dtype)
        self.calls += 1
        alpha = self.alpha
        if self.max_norm > 0:
            length = float((alpha @ gramian @ alpha).clamp_min(0).sqrt())
            if length > self.max_norm:
                alpha = alpha * (self.max_norm / length)
        return alpha

    def get_extra_state(self) -> dict[str, Any]:
        return {"calls": self.calls, "alpha": self.alpha.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.calls, self.alpha = int(state["calls"]), state["alpha"].double().clone()
