"""Generic heads on a pooled feature vector (domain packages register their own)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .registry import Registry

HEADS: Registry[nn.Module] = Registry("head")


@HEADS.register("linear")
class LinearHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(features)


@HEADS.register("mlp")
class MLPHead(nn.Module):
    """Hidden layers with GELU and dropout, then a linear output layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: Sequence[int] = (256,), dropout: float = 0.1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)
