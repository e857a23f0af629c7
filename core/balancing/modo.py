"""MoDo, multi-objective gradient with double sampling (Chen et al., "Three-Way Trade-Off in
Multi-Objective Learning", NeurIPS 2023 / JMLR 2024, arXiv:2305.20057)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Weighting, grow, non_negative, positive
from .sdmgrad import project_simplex


class MoDo(Weighting):
    """Weights that take one projected gradient step per training step towards MGDA's min-norm weights:

    ``lambda <- Proj_simplex(lambda - gamma (G + rho I) lambda)``, update ``J^T lambda``,

    with ``lambda`` starting uniform (the paper's Algorithm 1; torchjd's ``MoDoWeighting``). The
    paper estimates ``G`` by ``J_1 J_2^T`` from two independent mini-batches, which makes the
    step on ``lambda`` unbiased; this runs on the step's Gramian ``J J^T`` (one batch, as for
    SDMGrad), so it keeps MoDo's slowly moving weights but not its convergence guarantee under
    gradient noise. ``gamma`` acts on the raw Gramian (the paper's definition): scale it to the
    squared norm of the task gradients. A task's weight is kept between steps; when only some tasks
    are present, their stored weights are projected back onto the simplex first.

    Args:
        gamma: step size of the weights (paper: 1e-3 to 0.1, depending on the gradients' scale).
        rho: ridge on the Gramian (the paper's l2 regularisation of ``lambda``).
    """

    cost: ClassVar[str] = "one K x K projected gradient step"
    state: ClassVar[str] = "K weights on the simplex"

    def __init__(self, gamma: float = 0.1, rho: float = 0.1) -> None:
        super().__init__()
        self.gamma = positive("MoDo", "gamma", gamma)
        self.rho = non_negative("MoDo", "rho", rho)
        self.task_weights = torch.zeros(0, dtype=torch.float64)  # NaN: a task not seen yet

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        self.task_weights = grow(self.task_weights, max(rows) + 1, float("nan"))
        stored = self.task_weights[rows]
        lam = project_simplex(torch.where(torch.isnan(stored), torch.full_like(stored, 1.0 / k), stored))
        lam = project_simplex(lam - self.gamma * (gramian @ lam + self.rho * lam))
        self.task_weights[rows] = lam
        return lam

    def get_extra_state(self) -> dict[str, Any]:
        return {"task_weights": self.task_weights.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.task_weights = state["task_weights"].double().clone()
