"""GradNorm (Chen et al., ICML 2018, arXiv:1711.02257)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Weighting, grow, non_negative, positive


class GradNorm(Weighting):
    """Learned task weights that equalise the tasks' weighted gradient norms, tempered by their
    relative training rates.

    With ``n_k = w_k |g_k|`` (``|g_k|`` from the Gramian's diagonal, in the chosen space; the paper
    uses the last shared layer), ``r_k = (L_k / L_k(0)) / mean_j(L_j / L_j(0))`` and the constant
    target ``t_k = mean(n) r_k^alpha``, the weights follow one gradient step on
    ``sum_k |n_k - t_k|`` (``d/dw_k = sign(n_k - t_k) |g_k|``) with learning rate ``lr``, stay
    positive and are renormalised to sum to K. The step's update uses the weights *before* this
    step's change. The paper trains ``w`` with the network's optimizer; a private rate keeps the
    method a function of the Jacobian, the losses and its (checkpointed) state.

    Args:
        alpha: restoring-force strength (paper: 1.5 on NYUv2, 0.12 on synthetic tasks).
        lr: learning rate of the weights.
    """

    cost: ClassVar[str] = "O(K) with the loss values (the paper needs an extra backward per task)"
    needs_losses: ClassVar[bool] = True
    state: ClassVar[str] = "K weights, initial losses"

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        self.alpha = non_negative("GradNorm", "alpha", alpha)
        self.lr = positive("GradNorm", "lr", lr)
        self.task_weights = torch.zeros(0, dtype=torch.float64)
        self.initial_losses = torch.zeros(0, dtype=torch.float64)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        values, index = losses, rows
        assert values is not None  # needs_losses: checked by Method
        self.task_weights = grow(self.task_weights, max(index) + 1, 1.0)
        self.initial_losses = grow(self.initial_losses, max(index) + 1, float("nan"))
        first = torch.isnan(self.initial_losses[index])
        self.initial_losses[torch.tensor(index)[first]] = values[first]
        w = self.task_weights[index].clone()
        norms = gramian.diagonal().clamp_min(0).sqrt()
        ratio = values / self.initial_losses[index].clamp_min(1e-12)
        target = (w * norms).mean() * (ratio / ratio.mean().clamp_min(1e-12)) ** self.alpha
        step = torch.sign(w * norms - target) * norms
        new = (w - self.lr * step).clamp_min(1e-6)
        self.task_weights[index] = new * len(index) / new.sum()
        return w

    def get_extra_state(self) -> dict[str, Any]:
        return {"task_weights": self.task_weights.clone(), "initial_losses": self.initial_losses.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.task_weights = state["task_weights"].double().clone()
        self.initial_losses = state["initial_losses"].double().clone()
