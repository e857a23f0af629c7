"""Fast adaptive multitask optimisation (Liu et al., NeurIPS 2023, arXiv:2306.03792)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .base import BalancerSetup, LossBalancer, StepContext
from .method import non_negative, positive


class FAMO(LossBalancer):
    """Balances the tasks' *rates* of loss decrease with O(1) extra cost per step.

    Loss: ``sum_k z_k log(L_k - m_k + eps) / c`` with ``z = softmax(xi)``,
    ``c = sum_k z_k / (L_k - m_k + eps)`` (detached), ``m_k`` a lower bound of L_k (0). It is
    backpropagated through its linearisation ``sum_k z_k / (c (l_k + eps)) L_k`` (``d log L = dL / L``)
    with ``l_k`` the detached, rank-averaged loss values: the same gradient in one process, and
    exact under DDP where each rank's ``L_k`` is only its share of the global loss.
    After the optimizer step the logits ``xi`` follow the gradient of
    ``softmax(xi) . (log L(t) - log L(t+1))`` with Adam (lr ``w_lr``, weight decay ``gamma``),
    as in the authors' code; this needs the step's losses re-evaluated after the update
    (one extra forward pass, no backward).

    Args:
        gamma: weight decay on the logits (paper: 0.01; 0.001 for some tasks).
        w_lr: learning rate of the logits (paper: 0.025).
        eps: numerical floor inside the log.
    """

    cost = "one extra forward pass per step (losses after the update), no extra backward"
    state = "K logits + their Adam moments"

    def __init__(self, gamma: float = 0.01, w_lr: float = 0.025, eps: float = 1e-8) -> None:
        super().__init__()
        self.gamma = non_negative("FAMO", "gamma", gamma)
        self.w_lr = positive("FAMO", "w_lr", w_lr)
        self.eps = positive("FAMO", "eps", eps)
        self.register_buffer("logits", torch.zeros(0))
        self.register_buffer("adam_m", torch.zeros(0))
        self.register_buffer("adam_v", torch.zeros(0))
        self.adam_step = 0
        self.index: dict[str, int] = {}
        self.before: dict[str, float] = {}

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        self.index = {t: i for i, t in enumerate(setup.tasks)}
        k, device = len(setup.tasks), self.logits.device
        self.logits, self.adam_m, self.adam_v = (torch.zeros(k, device=device) for _ in range(3))

    def _index(self, tasks: list[str]) -> Tensor:
        return torch.tensor([self.index[t] for t in tasks], device=self.logits.device)

    def combine(self, losses: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        tasks = list(losses)
        z = torch.softmax(self.logits[self._index(tasks)], 0).tolist()
        values = [ctx.loss_values[t] + self.eps for t in tasks]
        c = sum(zk / v for zk, v in zip(z, values, strict=True))
        weights = [zk / (c * v) for zk, v in zip(z, values, strict=True)]  # d total / d L_k
        total = sum(w * losses[t] for w, t in zip(weights, tasks, strict=True))
        self.before = {t: ctx.loss_values[t] for t in tasks}
        return total, dict(zip(tasks, weights, strict=True))  # type: ignore[return-value]

    def after_step(self, recompute_losses: Callable[[], dict[str, float]]) -> None:
        if not self.before:
            return
        after = recompute_losses()
        tasks = [t for t in self.before if t in after]
        delta = torch.tensor(
            [math.log(self.before[t] + self.eps) - math.log(after[t] + self.eps) for t in tasks],
            device=self.logits.device,
        )
        idx = self._index(tasks)
        with torch.enable_grad():
            xi = self.logits[idx].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.softmax(xi, 0), xi, grad_outputs=delta)
        self._adam(idx, grad)
        self.before = {}

    def _adam(self, idx: Tensor, grad: Tensor, beta1: float = 0.9, beta2: float = 0.999) -> None:
        """torch.optim.Adam's update (L2-style weight decay), on the logits of the tasks present."""
        self.adam_step += 1
        grad = grad + self.gamma * self.logits[idx]
        self.adam_m[idx] = beta1 * self.adam_m[idx] + (1 - beta1) * grad
        self.adam_v[idx] = beta2 * self.adam_v[idx] + (1 - beta2) * grad**2
        m_hat = self.adam_m[idx] / (1 - beta1**self.adam_step)
        v_hat = self.adam_v[idx] / (1 - beta2**self.adam_step)
        self.logits[idx] -= self.w_lr * m_hat / (v_hat.sqrt() + 1e-8)

    def get_extra_state(self) -> dict[str, Any]:
        return {"adam_step": self.adam_step, "index": dict(self.index)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.adam_step, self.index = int(state["adam_step"]), dict(state["index"])

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, w_lr={self.w_lr}, eps={self.eps}"
