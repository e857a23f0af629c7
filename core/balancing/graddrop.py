"""GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020, arXiv:2010.06808)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .gradient import GradientBalancer


class GradDrop(GradientBalancer):
    """Per coordinate, keeps only the gradients of one sign, chosen at random by sign purity.

    ``P = (1 + sum_k g_k / sum_k |g_k|) / 2``; with ``U ~ Uniform(0, 1)`` per coordinate, task k's
    gradient is kept where ``(P > U and g_k > 0) or (P < U and g_k < 0)``; the update is the sum of
    kept gradients, plus ``leak`` times the dropped ones. The paper applies it to activations and
    sums P over the batch; here every coordinate of the chosen space (in ``rep``: every
    sample x feature) is treated on its own. Not a function of the Gramian: the K x P Jacobian is
    materialised. The reported weight of task k is ``<update, g_k> / |g_k|^2``.

    Args:
        space: ``rep`` or ``params``.
        engine: how ``params`` computes task gradients.
        leak: fraction of each dropped gradient still passed (paper: 0; 1 = plain sum).
        seed: seed of the private generator (checkpointed).
    """

    cost: ClassVar[str] = "K x P Jacobian + one uniform draw per coordinate; no extra backward"
    randomized: ClassVar[bool] = True

    def __init__(self, space: str = "params", engine: str = "auto", leak: float = 0.0, seed: int = 0) -> None:
        super().__init__(space, engine)
        self.leak, self.seed = leak, seed
        self.generator = torch.Generator().manual_seed(seed)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        purity = 0.5 * (1 + jacobian.sum(0) / jacobian.abs().sum(0).clamp_min(1e-30))
        u = torch.rand(jacobian.shape[1], generator=self.generator).to(jacobian.device, jacobian.dtype)
        keep = ((purity > u) & (jacobian > 0)) | ((purity < u) & (jacobian < 0))
        mask = keep.to(jacobian.dtype) * (1 - self.leak) + self.leak
        return (mask * jacobian).sum(0)

    def get_extra_state(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, leak={self.leak}, seed={self.seed}"
