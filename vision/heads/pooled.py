"""Image-level classification head: global average pool of the last feature map, then an MLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from core.heads import HEADS


@HEADS.register("pooled")
class PooledHead(nn.Module):
    """Pools the last stage of a multi-scale backbone (or a single map) for image-level tasks.

    Works with core's ``classification`` / ``multilabel`` / ``binary`` task types:
    ``{type: classification, head: {name: pooled, hidden: [128]}}``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor | Sequence[Tensor]) -> Tensor:
        last = features if isinstance(features, Tensor) else features[-1]
        return self.net(F.adaptive_avg_pool2d(last, 1).flatten(1))
