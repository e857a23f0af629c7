"""Multi-Task Attention Network: a shared network with a soft attention module per task and block.

Liu, Johns, Davison, "End-to-End Multi-Task Learning with Attention", CVPR 2019. Task t's
attended features after block b are ``a ⊙ s_b``, with the mask
``a = sigmoid(A_tb([s_b, f_tb(p_t,b-1)]))`` computed from the shared block output ``s_b`` and
the task's own attended features from the block before (``f_tb`` maps them to ``s_b``'s width).
The paper's masks read a feature inside each block; the blocks here are opaque, so the mask reads
the block output. Vector states ([B, C], [B, L, C]) use linear layers, feature maps ([B, C, H, W])
1x1 convolutions.

Attention modules read the shared state of every block, so no single tensor separates shared
from task parameters (``params`` space only).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Architecture, require_blocks
from .registry import ARCHITECTURES


class ChannelLinear(nn.Module):
    """A linear map of the channel dimension: the last one of vectors / token states, dim 1 of maps."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            return torch.einsum("bchw,oc->bohw", x, self.fc.weight) + self.fc.bias.view(1, -1, 1, 1)
        return self.fc(x)


def channel_cat(a: Tensor, b: Tensor) -> Tensor:
    return torch.cat([a, b], 1 if a.ndim == 4 else -1)


class Attention(nn.Module):
    """One task's mask at one block: ``sigmoid(A([s, f(p)]))`` (or ``sigmoid(A(s))`` at the first block)."""

    def __init__(self, dim: int, prev_dim: int | None, hidden: int) -> None:
        super().__init__()
        self.project = None if prev_dim is None else ChannelLinear(prev_dim, dim)
        self.mask = nn.Sequential(
            ChannelLinear(dim if prev_dim is None else 2 * dim, hidden),
            nn.ReLU(),
            ChannelLinear(hidden, dim),
            nn.Sigmoid(),
        )

    def forward(self, shared: Tensor, previous: Tensor | None) -> Tensor:
        x = shared if self.project is None or previous is None else channel_cat(shared, self.project(previous))
        return self.mask(x) * shared


@ARCHITECTURES.register("mtan")
class MTAN(Architecture):
    """The backbone's blocks shared; per task, an attention module after every block.

    Args:
        hidden_ratio: hidden width of each attention module as a fraction of the block's width.
    """

    shared_representation = False

    def __init__(self, backbone: nn.Module, tasks: Sequence[str], hidden_ratio: float = 0.5) -> None:
        super().__init__(tasks)
        blocks = require_blocks(backbone, "mtan")
        if hidden_ratio <= 0:
            raise ConfigError(f"mtan: hidden_ratio must be > 0, got {hidden_ratio}")
        self.hidden_ratio = float(hidden_ratio)
        dims = blocks.block_dims()
        self.attention = nn.ModuleDict(
            {
                t: nn.ModuleList(
                    Attention(d, dims[b - 1] if b else None, max(1, round(d * hidden_ratio)))
                    for b, d in enumerate(dims)
                )
                for t in self.tasks
            }
        )
        self._blocks = [blocks.block(b) for b in range(len(dims))]  # views of the backbone's modules, not owned
        self._finish = blocks.finish

    def encode(self, backbone: nn.Module, inputs: Any) -> list[Tensor]:
        state = backbone.stem(inputs)
        shared = []
        for block in self._blocks:
            state = block(state)
            if not isinstance(state, Tensor):
                raise ConfigError("mtan attends to tensors; this backbone's block state is not a tensor")
            shared.append(state)
        return shared

    def decode(self, features: list[Tensor], tasks: Sequence[str]) -> dict[str, Any]:
        out = {}
        for t in tasks:
            attended: Tensor | None = None
            for module, shared in zip(self.attention[t], features, strict=True):
                attended = module(shared, attended)
            out[t] = self._finish(attended)
        return out

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.attention[task].parameters())

    def spec(self) -> dict[str, Any]:
        return {"name": "mtan", "hidden_ratio": self.hidden_ratio}
