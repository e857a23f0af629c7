"""GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020, arXiv:2010.06808)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from .method import Aggregator, in_range


class GradDrop(Aggregator):
    """Per coordinate, keeps only the gradients of one sign, chosen at random by sign purity.

    ``P = (1 + sum_k g_k / sum_k |g_k|) / 2``; with ``U ~ Uniform(0, 1)`` per coordinate, task k's
    gradient is kept where ``(P > U and g_k > 0) or (P < U and g_k < 0)``; the update is the sum of
    kept gradients, plus ``leak`` times the dropped ones. The paper applies it to activations and
    sums P over the batch; here every coordinate of the chosen space (in ``rep``: every
    sample x feature) is treated on its own. Not a function of the Gramian: the K x P Jacobian is
    materialised. The reported weight of task k is ``<update, g_k> / |g_k|^2``.

    The uniforms are drawn on the Jacobian's device from a generator seeded by ``(seed, draw
    count)``: no host-to-device copy, and the state is one integer (identical on all ranks).

    Args:
        leak: fraction of each dropped gradient still passed (paper: 0; 1 = plain sum).
        seed: seed of the draws (checkpointed).
    """

    cost: ClassVar[str] = "one uniform draw per coordinate (on the device)"
    randomized: ClassVar[bool] = True
    state: ClassVar[str] = "draw count"

    def __init__(self, leak: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.leak, self.seed = in_range("GradDrop", "leak", leak, 0.0, 1.0), int(seed)
        self.draws = 0

    def _aggregate(self, jacobian: Tensor, losses: Tensor | None, rows: list[int]) -> Tensor:
        # With S = sum_k g_k and A = sum_k |g_k| per coordinate, the kept positive parts sum to
        # (S + A) / 2 and the kept negative parts to (S - A) / 2: two reductions over the K x P
        # Jacobian instead of a K x P mask.
        total = jacobian.sum(0)
        absolute = jacobian.abs().sum(0)  # (linalg.vector_norm(ord=1, dim=0) is ~25x slower on the CPU)
        purity = 0.5 * (1 + total / absolute.clamp_min(1e-30))
        generator = torch.Generator(device=jacobian.device).manual_seed(self.seed * 1_000_003 + self.draws)
        self.draws += 1
        u = torch.rand(jacobian.shape[1], generator=generator, device=jacobian.device, dtype=jacobian.dtype)
        kept = torch.where(purity > u, total + absolute, total - absolute) / 2
        return kept if self.leak == 0 else kept + self.leak * (total - kept)

    def get_extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])
