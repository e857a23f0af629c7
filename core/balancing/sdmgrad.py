"""SDMGrad, stochastic direction-oriented MOO gradient descent (Xiao et al., NeurIPS 2023, arXiv:2305.18409)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Weighting, in_range, non_negative, positive, positive_int


class SDMGrad(Weighting):
    """MGDA pulled towards a preferred direction: ``min_{w in simplex} 1/2 |J^T (w + lambda w~)|^2``
    by ``n_iter`` projected SGD steps with momentum (warm-started from the previous step's ``w``);
    weights ``(w + lambda w~) / (1 + lambda)`` with ``w~ = 1/K`` (the mean gradient).

    The paper estimates the inner gradient with ``J_1 J_2^T`` from two independent mini-batches
    (unbiased); this runs on the step's Gramian ``J J^T`` (one batch, as LibMTL's implementation
    does). The Gramian is first divided by the squared mean task-gradient norm (authors' code, without
    their absolute ``+ 1e-8``, which breaks scale invariance for small gradients), so ``lr`` is scale-free.

    Args:
        lr: inner step size (authors: 10).
        momentum: inner momentum in [0, 1).
        n_iter: inner steps per call (authors: 20).
        lambda_: pull towards the mean (authors' experiments: 0.3).
    """

    cost: ClassVar[str] = "n_iter K x K projected gradient steps"
    state: ClassVar[str] = "the inner weights (warm start)"
    properties = frozenset({"scale_invariant_weights"})

    def __init__(self, lr: float = 10.0, momentum: float = 0.5, n_iter: int = 20, lambda_: float = 0.3) -> None:
        super().__init__()
        self.lr = positive("SDMGrad", "lr", lr)
        self.momentum = in_range("SDMGrad", "momentum", momentum, 0.0, 0.999999)
        self.n_iter = positive_int("SDMGrad", "n_iter", n_iter)
        self.lambda_ = non_negative("SDMGrad", "lambda_", lambda_)
        self.inner = torch.zeros(0, dtype=torch.float64)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        if self.inner.shape[0] != k:  # K changed (a task absent this step): restart from uniform
            self.inner = torch.full((k,), 1.0 / k, dtype=torch.float64)
        target = torch.full((k,), 1.0 / k, dtype=torch.float64)
        scale = gramian.diagonal().clamp_min(0).sqrt().mean()
        a = gramian / (scale**2).clamp_min(1e-300)
        w, velocity = self.inner, torch.zeros(k, dtype=torch.float64)
        for i in range(self.n_iter):
            grad = a @ (w + self.lambda_ * target)
            velocity = grad if i == 0 else self.momentum * velocity + grad
            w = project_simplex(w - self.lr * velocity)
        self.inner = w
        return (w + self.lambda_ * target) / (1 + self.lambda_)

    def get_extra_state(self) -> dict[str, Any]:
        return {"inner": self.inner.clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.inner = state["inner"].double().clone()


def project_simplex(v: Tensor) -> Tensor:
    """Euclidean projection onto ``{w >= 0, sum w = 1}`` (Duchi et al., ICML 2008)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = u.cumsum(0) - 1
    index = torch.arange(1, v.shape[0] + 1, dtype=v.dtype)
    rho = int((u - cumulative / index > 0).nonzero().max())
    return (v - cumulative[rho] / (rho + 1)).clamp_min(0)
