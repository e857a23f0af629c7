"""GradNorm (Chen et al., ICML 2018, arXiv:1711.02257)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .gradient import GramianBalancer, grow, need_losses, rows_or_all


class GradNorm(GramianBalancer):
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
        space: ``rep`` or ``params``.
        engine: how ``params`` computes task gradients.
        alpha: restoring-force strength (paper: 1.5 on NYUv2, 0.12 on synthetic tasks).
        lr: learning rate of the weights.
    """

    cost: ClassVar[str] = "K x K Gramian + the loss values; no extra backward (the paper needs one per task)"

    def __init__(self, space: str = "params", engine: str = "auto", alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__(space, engine)
        self.alpha, self.lr = alpha, lr
        self.task_weights = torch.zeros(0, dtype=torch.float64)
        self.initial_losses = torch.zeros(0, dtype=torch.float64)

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        values = need_losses("GradNorm", losses)
        index = rows_or_all(rows, gramian.shape[0])
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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, alpha={self.alpha}, lr={self.lr}"
