"""Multi-gate Mixture-of-Experts: shared experts, one softmax gate per task.

Ma, Zhao, Yi, Chen, Hong, Chi, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018. The experts and the gates read the backbone's
feature vector (not the raw input), so the backbone stays shared below the experts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Architecture, vector_features
from .experts import ExpertBank, StackedLinear, gate_statistics, select_rows, to_floats
from .registry import ARCHITECTURES


@ARCHITECTURES.register("mmoe")
class MMoE(Architecture):
    """``n_experts`` experts on the backbone features; task t's head reads ``sum_e softmax(W_t h)_e expert_e(h)``.

    ``encode`` returns ``{"experts": [B, n, D], "gates": [B, T, n]}`` (gate logits of every task):
    the shared representation, with only the backbone, experts and stacked gates upstream.

    Args:
        n_experts: number of shared experts.
        expert_hidden: hidden width of each expert (default: the backbone's ``out_dim``).
        dropout: dropout inside the experts.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[str],
        n_experts: int = 4,
        expert_hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(tasks)
        if n_experts < 1:
            raise ConfigError(f"mmoe: n_experts must be >= 1, got {n_experts}")
        dim = int(backbone.out_dim)
        self.n_experts, self.expert_hidden, self.dropout = n_experts, expert_hidden or dim, dropout
        self.experts = ExpertBank(n_experts, dim, self.expert_hidden, dim, dropout)
        self.gates = StackedLinear(len(self.tasks), dim, n_experts)
        self._stats: dict[str, Tensor] = {}

    def encode(self, backbone: nn.Module, inputs: Any) -> dict[str, Tensor]:
        h = vector_features(backbone(inputs), "mmoe")
        return {"experts": self.experts(h), "gates": self.gates(h)}

    def decode(self, features: dict[str, Tensor], tasks: Sequence[str]) -> dict[str, Any]:
        out = {}
        for t in tasks:
            weights = torch.softmax(features["gates"][:, self.tasks.index(t)].float(), -1)
            out[t] = torch.einsum("bn,bnd->bd", weights.to(features["experts"].dtype), features["experts"])
            self._stats.update(gate_statistics(weights, t))
        return out

    def diagnostics(self) -> dict[str, float]:
        return to_floats(self._stats)  # one host sync, at log time

    def adapt_state(self, state: dict[str, Tensor], saved_tasks: Sequence[str]) -> dict[str, Tensor]:
        rows = [list(saved_tasks).index(t) for t in self.tasks]
        return select_rows(state, ["gates.weight", "gates.bias"], rows)

    def spec(self) -> dict[str, Any]:
        return {
            "name": "mmoe",
            "n_experts": self.n_experts,
            "expert_hidden": self.expert_hidden,
            "dropout": self.dropout,
        }
