"""Aligned-MTL (Senushkin et al., CVPR 2023, arXiv:2305.19000)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from .method import Weighting, choice

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(Weighting):
    """Makes the task gradients orthogonal and equally long (condition number 1) before summing.

    With ``G = V diag(lambda) V^T`` (rank r, eigenvalues above ``max(lambda) K eps``), the balance
    transform is ``B = sqrt(s) V_r diag(lambda_r)^-1/2 V_r^T`` and the weights ``w = B p`` with the
    preference ``p = 1/K``; ``s`` is the smallest (``min``, the paper), median or mean eigenvalue.

    ``space: rep`` is the paper's Aligned-MTL-UB.

    Args:
        scale_mode: ``min`` | ``median`` | ``rmse``.
    """

    cost: ClassVar[str] = "a K x K eigendecomposition"
    properties = frozenset({"permutation_invariant", "linear_under_scaling"})

    def __init__(self, scale_mode: str = "min") -> None:
        super().__init__()
        self.scale_mode = choice("AlignedMTL", "scale_mode", scale_mode, SCALE_MODES)

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        k = gramian.shape[0]
        pref = torch.full((k,), 1.0 / k, dtype=gramian.dtype)
        eigvals, eigvecs = torch.linalg.eigh(gramian)
        keep = eigvals > eigvals.max() * k * torch.finfo(gramian.dtype).eps
        if not keep.any():
            return pref
        lam, vec = eigvals[keep], eigvecs[:, keep]
        scale = {"min": lam.min(), "median": torch.median(lam), "rmse": lam.mean()}[self.scale_mode]
        balance = scale.sqrt() * (vec / lam.sqrt()) @ vec.T
        return balance @ pref
