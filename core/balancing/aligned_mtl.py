"""Aligned-MTL (Senushkin et al., CVPR 2023, arXiv:2305.19000)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from ..errors import ConfigError
from .gradient import GramianBalancer

SCALE_MODES = ("min", "median", "rmse")


class AlignedMTL(GramianBalancer):
    """Makes the task gradients orthogonal and equally long (condition number 1) before summing.

    With ``G = V diag(lambda) V^T`` (rank r, eigenvalues above ``max(lambda) K eps``), the balance
    transform is ``B = sqrt(s) V_r diag(lambda_r)^-1/2 V_r^T`` and the weights ``w = B p`` with the
    preference ``p = 1/K``; ``s`` is the smallest (``min``, the paper), median or mean eigenvalue.

    Args:
        space: ``rep`` (the paper's Aligned-MTL-UB) or ``params``.
        engine: how ``params`` computes task gradients.
        scale_mode: ``min`` | ``median`` | ``rmse``.
    """

    cost: ClassVar[str] = "K x K Gramian + a K x K eigendecomposition; no extra backward"

    def __init__(self, space: str = "params", engine: str = "auto", scale_mode: str = "min") -> None:
        super().__init__(space, engine)
        if scale_mode not in SCALE_MODES:
            raise ConfigError(f"unknown Aligned-MTL scale_mode '{scale_mode}'; valid: {', '.join(SCALE_MODES)}")
        self.scale_mode = scale_mode

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
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

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale_mode={self.scale_mode!r}"
