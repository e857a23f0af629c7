"""DSelect-k: a continuously differentiable, sparse gate selecting k of n shared experts per task.

Hazimeh, Zhao, Chowdhery, Sathiamoorthy, Chen, Mazumder, Hong, Chi, "DSelect-k: Differentiable
Selection in the Mixture of Experts with Applications to Multi-Task Learning", NeurIPS 2021.

Each task has k single-expert selectors. Selector i holds m = ceil(log2 n) logits z; with the
smooth-step S, expert j (binary code b(j)) gets ``prod_l (S(z_l) if b_l(j) else 1 - S(z_l))``:
one expert when every S(z_l) has reached 0 or 1, which happens in finite time, unlike softmax.
The k selections are mixed by ``softmax(alpha)``. Both z and alpha are per-example (linear in the
backbone features). For n not a power of two, the selector is renormalised over the n valid codes.
The paper's optional entropy regulariser (driving selectors to binary sooner) is not included.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Architecture, vector_features
from .experts import ExpertBank, StackedLinear, gate_statistics, select_rows, to_floats
from .registry import ARCHITECTURES


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """0 below -gamma/2, 1 above gamma/2, the cubic ``-2/gamma^3 t^3 + 3/(2 gamma) t + 1/2`` between."""
    cubic = -2 / gamma**3 * t**3 + 3 / (2 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


@ARCHITECTURES.register("dselect_k")
class DSelectK(Architecture):
    """``n_experts`` shared experts; each task mixes ``k`` experts chosen by differentiable selectors.

    ``encode`` returns ``{"experts": [B, n, D], "selectors": [B, T, k*m], "mix": [B, T, k]}``.

    Args:
        n_experts: number of shared experts (>= 2).
        k: selectors (experts used) per task.
        gamma: width of the smooth-step's transition; larger = smoother, slower to become sparse.
        expert_hidden: hidden width of each expert (default: the backbone's ``out_dim``).
        dropout: dropout inside the experts.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[str],
        n_experts: int = 4,
        k: int = 2,
        gamma: float = 1.0,
        expert_hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(tasks)
        if n_experts < 2:
            raise ConfigError(f"dselect_k: n_experts must be >= 2, got {n_experts}")
        if not 1 <= k <= n_experts:
            raise ConfigError(f"dselect_k: k must be in [1, n_experts={n_experts}], got {k}")
        if gamma <= 0:
            raise ConfigError(f"dselect_k: gamma must be > 0, got {gamma}")
        dim = int(backbone.out_dim)
        self.n_experts, self.k, self.gamma = n_experts, k, gamma
        self.expert_hidden, self.dropout = expert_hidden or dim, dropout
        self.bits = max(1, math.ceil(math.log2(n_experts)))
        self.experts = ExpertBank(n_experts, dim, self.expert_hidden, dim, dropout)
        self.selectors = StackedLinear(len(self.tasks), dim, k * self.bits)
        self.mix = StackedLinear(len(self.tasks), dim, k)
        codes = torch.tensor([[(j >> bit) & 1 for bit in range(self.bits)] for j in range(n_experts)])
        self.register_buffer("codes", codes.float(), persistent=False)  # [n, m], derived from n_experts
        self._stats: dict[str, Tensor] = {}

    def encode(self, backbone: nn.Module, inputs: Any) -> dict[str, Tensor]:
        h = vector_features(backbone(inputs), "dselect_k")
        return {"experts": self.experts(h), "selectors": self.selectors(h), "mix": self.mix(h)}

    def gate(self, selectors: Tensor, mix: Tensor) -> Tensor:
        """[B, k*m] selector logits and [B, k] mixing logits of one task -> [B, n] expert weights."""
        s = smooth_step(selectors.float().view(-1, self.k, 1, self.bits), self.gamma)  # [B, k, 1, m]
        per_bit = self.codes * s + (1 - self.codes) * (1 - s)  # [B, k, n, m]
        select = per_bit.prod(-1)  # [B, k, n]
        select = select / select.sum(-1, keepdim=True).clamp_min(1e-12)  # only n of the 2^m codes exist
        return torch.einsum("bk,bkn->bn", torch.softmax(mix.float(), -1), select)

    def decode(self, features: dict[str, Tensor], tasks: Sequence[str]) -> dict[str, Any]:
        out = {}
        for t in tasks:
            i = self.tasks.index(t)
            weights = self.gate(features["selectors"][:, i], features["mix"][:, i])
            out[t] = torch.einsum("bn,bnd->bd", weights.to(features["experts"].dtype), features["experts"])
            self._stats.update(gate_statistics(weights, t))
        return out

    def diagnostics(self) -> dict[str, float]:
        return to_floats(self._stats)

    def adapt_state(self, state: dict[str, Tensor], saved_tasks: Sequence[str]) -> dict[str, Tensor]:
        rows = [list(saved_tasks).index(t) for t in self.tasks]
        keys = ["selectors.weight", "selectors.bias", "mix.weight", "mix.bias"]
        return select_rows(state, keys, rows)

    def spec(self) -> dict[str, Any]:
        return {
            "name": "dselect_k",
            "n_experts": self.n_experts,
            "k": self.k,
            "gamma": self.gamma,
            "expert_hidden": self.expert_hidden,
            "dropout": self.dropout,
        }
