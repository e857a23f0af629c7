"""IMTL-G, the gradient half of impartial multi-task learning (Liu et al., ICLR 2021)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .method import Weighting


class IMTLG(Weighting):
    """The combination ``g = J^T w`` (``sum w = 1``) whose projections on every task's unit
    gradient ``u_k`` are equal: ``g . u_k = const``. Since ``g . u_k = (G w)_k / |g_k|``, the
    weights solve ``G w = c d`` with ``d_k = |g_k|``: ``w = G^+ d / sum(G^+ d)`` (the paper's
    closed form ``alpha = g_1 U^T (D U^T)^-1`` written with the Gramian; the pseudo-inverse covers
    rank-deficient Jacobians). Zero weights when ``sum(G^+ d)`` vanishes.
    """

    cost: ClassVar[str] = "a K x K pseudo-inverse"
    properties = frozenset({"permutation_invariant", "scale_invariant_weights"})

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        d = gramian.diagonal().clamp_min(0).sqrt()
        v = torch.linalg.pinv(gramian, hermitian=True) @ d
        total = v.sum()
        return torch.zeros_like(v) if total.abs() < 1e-12 else v / total
