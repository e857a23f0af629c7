"""Image-level classification head: global average pool of the last feature map, then an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from core.heads import HEADS, MLPHead


@HEADS.register("pooled")
class PooledHead(nn.Module):
    """Pools the last stage of a multi-scale backbone (or a single map) for image-level tasks.

    Works with core's ``classification`` / ``multilabel`` / ``binary`` task types:
    ``{type: classification, head: {name: pooled, hidden: [128]}}``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        self.mlp = MLPHead(in_dim, out_dim, hidden, dropout)

    def forward(self, features: Tensor | Sequence[Tensor]) -> Tensor:
        last = features if isinstance(features, Tensor) else features[-1]
        return self.mlp(F.adaptive_avg_pool2d(last, 1).flatten(1))
