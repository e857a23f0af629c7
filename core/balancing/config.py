"""ConFIG, conflict-free updates (Liu, Chu & Thuerey, ICLR 2025, arXiv:2408.11104)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .method import Aggregator


class ConFIG(Aggregator):
    """The direction with equal cosine to every task gradient, as long as their summed projections.

    With unit rows ``u_k = g_k / |g_k|`` (zero rows stay zero), ``d = U^+ 1`` (the paper's Eq. 2:
    ``u_k . d`` is the same for every k), ``e = d / |d|`` and the update ``(sum_k g_k . e) e``.
    Not a combination of the rows with Gramian-computable weights in general, so the Jacobian is
    materialised.
    """

    cost: ClassVar[str] = "a K x P pseudo-inverse (the K x P Jacobian is materialised)"
    properties = frozenset({"non_conflicting", "permutation_invariant", "linear_under_scaling"})

    def _aggregate(self, jacobian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        norms = jacobian.norm(dim=1, keepdim=True)
        units = torch.where(norms > 0, jacobian / norms.clamp_min(torch.finfo(jacobian.dtype).tiny), 0.0)
        direction = torch.linalg.pinv(units) @ torch.ones(
            jacobian.shape[0], dtype=jacobian.dtype, device=jacobian.device
        )
        length = direction.norm()
        if length == 0:
            return torch.zeros_like(direction)
        unit = direction / length
        return (jacobian @ unit).sum() * unit
