"""Expert banks and stacked per-task gates, the building blocks of the expert architectures.

Experts are stored stacked (one tensor per layer, leading dimension = expert) so that all run in
one batched matmul, and each expert slice is initialised on its own: identical experts receive
identical gradients and never differ, so independent initialisation is what makes them experts.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _init_like_linear(weight: Tensor, bias: Tensor, fan_in: int) -> None:
    """nn.Linear's default initialisation, drawn independently for every leading slice."""
    bound = 1 / math.sqrt(fan_in)
    with torch.no_grad():
        for w in weight:
            nn.init.kaiming_uniform_(w.T, a=math.sqrt(5))  # w is [in, out]; Linear stores [out, in]
        bias.uniform_(-bound, bound)


class StackedLinear(nn.Module):
    """One linear map per slot (task or expert), stored as a [S, in, out] tensor.

    ``forward``: [B, in] (one input for every slot) or [B, S, in] (one per slot) -> [B, S, out].
    Stacked per-task gates are one tensor that every task's output depends on, so they sit
    upstream of the shared representation with the experts (exact ``rep`` gradients);
    :func:`select_rows` keeps the rows of a task subset when a saved model is partly loaded.
    """

    def __init__(self, slots: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(slots, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(slots, out_dim))
        _init_like_linear(self.weight, self.bias, in_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 2:
            return torch.einsum("bi,sio->bso", x, self.weight) + self.bias
        return torch.einsum("bsi,sio->bso", x, self.weight) + self.bias


class ExpertBank(nn.Module):
    """``n`` two-layer ReLU MLP experts ``in_dim -> hidden -> out_dim`` (Ma et al. 2018's experts).

    ``forward``: [B, in_dim] -> [B, n, out_dim].
    """

    def __init__(self, n: int, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = StackedLinear(n, in_dim, hidden)
        self.fc2 = StackedLinear(n, hidden, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


def gate_statistics(weights: Tensor, task: str) -> dict[str, Tensor]:
    """Mean per-sample gate entropy (nats) and mean load per expert of one task's [B, n] gate weights."""
    w = weights.detach().float()
    stats = {f"gate/{task}/entropy": -(w * w.clamp_min(1e-12).log()).sum(-1).mean()}
    stats.update({f"gate/{task}/expert{i}": load for i, load in enumerate(w.mean(0))})
    return stats


def select_rows(state: dict[str, Tensor], keys: list[str], rows: list[int]) -> dict[str, Tensor]:
    """``state`` with the leading-dimension rows ``rows`` of ``keys`` (a task subset of stacked gates)."""
    index = torch.tensor(rows, dtype=torch.long)
    return {k: (v.index_select(0, index.to(v.device)) if k in keys else v) for k, v in state.items()}


def to_floats(stats: dict[str, Tensor]) -> dict[str, float]:
    """Detached scalar tensors -> floats with one host-device sync."""
    if not stats:
        return {}
    return dict(zip(stats, torch.stack(list(stats.values())).tolist(), strict=True))
