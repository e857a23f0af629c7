"""ExcessMTL, robust multi-task learning with excess risks (He et al., ICML 2024, PMLR 235)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Aggregator, grow, positive


class ExcessMTL(Aggregator):
    """Weights that grow with each task's estimated *excess* risk (distance to its optimum).

    The excess risk of task k is approximated to second order with an AdaGrad diagonal Hessian
    (the paper's Eqs. 6-7): ``E_k = sum_p g_kp^2 / sqrt(S_kp)`` with ``S_k`` the running sum of
    ``g_k^2``; it is divided by its first value (scale processing, Sec. 3.2) and the weights follow
    an exponentiated-gradient step ``w <- softmax(log w + eta E)`` (Eq. 9) from ``1/K``. The update
    is ``J^T w``. The K x P squared-gradient sums are parameter statistics, so the method is defined
    on ``params`` only.

    Args:
        robust_step_size: ``eta`` of the exponentiated update (paper: 1).
    """

    spaces: ClassVar[tuple[str, ...]] = ("params",)
    cost: ClassVar[str] = "K x P squared-gradient state"
    state: ClassVar[str] = "K x P squared-gradient sums, K weights, first excess risks"
    properties = frozenset({"permutation_invariant"})

    def __init__(self, robust_step_size: float = 1.0) -> None:
        super().__init__()
        self.robust_step_size = positive("ExcessMTL", "robust_step_size", robust_step_size)
        self.squares = torch.zeros(0, 0)
        self.log_weights = torch.zeros(0, dtype=torch.float64)
        self.initial = torch.zeros(0, dtype=torch.float64)

    def _aggregate(self, jacobian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        if self.squares.shape[1:] != jacobian.shape[1:]:
            self.squares = torch.zeros(0, jacobian.shape[1], dtype=jacobian.dtype, device=jacobian.device)
        size = max(rows) + 1
        self.squares = grow(self.squares.to(jacobian.device, jacobian.dtype), size, 0.0)
        self.log_weights = grow(self.log_weights, size, 0.0)
        self.initial = grow(self.initial, size, float("nan"))
        squared = jacobian * jacobian
        self.squares[rows] += squared
        excess = (squared / torch.sqrt(self.squares[rows] + 1e-7)).sum(1).double().cpu()
        first = torch.isnan(self.initial[rows])
        self.initial[torch.tensor(rows)[first]] = excess[first]
        excess = torch.where(first, excess, excess / (self.initial[rows] + 1e-7))
        w = torch.softmax(self.log_weights[rows] + self.robust_step_size * excess, 0)
        self.log_weights[rows] = torch.log(w)
        return w.to(jacobian.device, jacobian.dtype) @ jacobian

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "squares": self.squares.clone(),
            "log_weights": self.log_weights.clone(),
            "initial": self.initial.clone(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.squares = state["squares"].clone()
        self.log_weights, self.initial = state["log_weights"].double().clone(), state["initial"].double().clone()
