"""DB-MTL, dual-balancing multi-task learning (Lin et al., 2023, arXiv:2308.12029)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Aggregator, grow, in_range, non_negative, positive


class DBMTL(Aggregator):
    """Loss-scale balancing by a log transform, then gradient-magnitude balancing.

    The gradient of ``log(L_k + eps)`` is ``g_k / (L_k + eps)``; its EMA
    ``h_k <- h_k + (beta / t^beta_sigma)(h_k_old - h_k_new)`` (the authors' schedule, ``t`` the
    step) is normalised and rescaled to the largest norm: update
    ``= sum_k (max_j |h_j| / |h_k|) h_k``. The EMA of whole gradient vectors is only meaningful
    for parameters (representation gradients are of different samples each step), so the method
    is defined on ``params`` only, and keeps a K x P state (checkpointed).

    Args:
        beta: EMA factor (paper: 0.9).
        beta_sigma: decay exponent of the EMA factor (paper: 0.5).
        eps: inside the log.
    """

    spaces: ClassVar[tuple[str, ...]] = ("params",)
    cost: ClassVar[str] = "K x P EMA state"
    needs_losses: ClassVar[bool] = True
    state: ClassVar[str] = "K x P EMA of log-loss gradients, step count"

    def __init__(self, beta: float = 0.9, beta_sigma: float = 0.5, eps: float = 1e-8) -> None:
        super().__init__()
        self.beta = in_range("DBMTL", "beta", beta, 0.0, 1.0)
        self.beta_sigma = non_negative("DBMTL", "beta_sigma", beta_sigma)
        self.eps = positive("DBMTL", "eps", eps)
        self.steps = 0
        self.buffer = torch.zeros(0, 0)

    def _aggregate(self, jacobian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        assert losses is not None  # needs_losses: checked by Method
        values, index = losses.to(jacobian.device, jacobian.dtype), rows
        if self.buffer.shape[1:] != jacobian.shape[1:]:
            self.buffer = torch.zeros(0, jacobian.shape[1], dtype=jacobian.dtype, device=jacobian.device)
        self.buffer = grow(self.buffer.to(jacobian.device), max(index) + 1, 0.0)
        self.steps += 1
        log_grads = jacobian / (values[:, None] + self.eps)
        decay = self.beta / self.steps**self.beta_sigma
        old = self.buffer[index]
        new = log_grads + decay * (old - log_grads)
        self.buffer[index] = new
        norms = new.norm(dim=1)
        return ((norms.max() / (norms + 1e-8))[:, None] * new).sum(0)

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "buffer": self.buffer.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps, self.buffer = int(state["steps"]), state["buffer"].clone()
