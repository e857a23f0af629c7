"""MoCo, multi-objective gradient correction (Fernando et al., ICLR 2023, arXiv:2210.12624)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Aggregator, grow, in_range, non_negative, positive
from .sdmgrad import project_simplex


class MoCo(Aggregator):
    """MGDA on tracked gradients, which removes the bias of stochastic MGDA.

    Per step t (the paper's Algorithm 1): the tracking estimate ``Y <- Y - beta_t (Y - J)``, the
    weights ``w <- Proj_simplex(w - gamma_t (Y Y^T + rho I) w)``, the update ``Y^T w``, with
    ``beta_t = beta / t^beta_sigma`` and ``gamma_t = gamma / t^gamma_sigma`` (LibMTL's schedule).
    The tracked gradients are of parameters (representation gradients are of different samples
    each step), so the method is defined on ``params`` only and keeps a K x P state (checkpointed).

    Args:
        beta: tracking rate (paper: 0.5).
        beta_sigma: decay exponent of the tracking rate.
        gamma: step size of the weights (paper: 0.1).
        gamma_sigma: decay exponent of the weight step size.
        rho: ridge on the tracked Gramian.
    """

    spaces: ClassVar[tuple[str, ...]] = ("params",)
    cost: ClassVar[str] = "K x P tracking state"
    state: ClassVar[str] = "K x P tracked gradients, K weights, step count"
    properties = frozenset({"linear_under_scaling"})

    def __init__(
        self, beta: float = 0.5, beta_sigma: float = 0.5, gamma: float = 0.1, gamma_sigma: float = 0.5, rho: float = 0.0
    ) -> None:
        super().__init__()
        self.beta = in_range("MoCo", "beta", beta, 1e-12, 1.0)
        self.beta_sigma = non_negative("MoCo", "beta_sigma", beta_sigma)
        self.gamma = positive("MoCo", "gamma", gamma)
        self.gamma_sigma = non_negative("MoCo", "gamma_sigma", gamma_sigma)
        self.rho = non_negative("MoCo", "rho", rho)
        self.steps = 0
        self.tracked = torch.zeros(0, 0)
        self.task_weights = torch.zeros(0, dtype=torch.float64)

    def _aggregate(self, jacobian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        if self.tracked.shape[1:] != jacobian.shape[1:]:
            self.tracked = torch.zeros(0, jacobian.shape[1], dtype=jacobian.dtype, device=jacobian.device)
        size = max(rows) + 1
        self.tracked = grow(self.tracked.to(jacobian.device, jacobian.dtype), size, 0.0)
        self.task_weights = grow(self.task_weights, size, float("nan"))
        self.steps += 1
        beta = self.beta / self.steps**self.beta_sigma
        gamma = self.gamma / self.steps**self.gamma_sigma
        w = self.task_weights[rows]
        fresh = torch.isnan(w)  # a task's first step: start tracking at its gradient, weight 1/K
        y = self.tracked[rows]
        y = torch.where(fresh.to(y.device)[:, None], jacobian, y - beta * (y - jacobian))
        self.tracked[rows] = y
        w = project_simplex(torch.where(fresh, torch.full_like(w, 1.0 / len(rows)), w))
        gramian = (y.double() @ y.double().T).cpu()
        gramian = gramian / gramian.diagonal().mean().clamp_min(1e-30)  # step size free of the gradients' scale
        w = project_simplex(w - gamma * (gramian + self.rho * torch.eye(len(rows), dtype=torch.float64)) @ w)
        self.task_weights[rows] = w
        return w.to(y.device, y.dtype) @ y

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "tracked": self.tracked.clone(), "task_weights": self.task_weights.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps, self.tracked = int(state["steps"]), state["tracked"].clone()
        self.task_weights = state["task_weights"].double().clone()
