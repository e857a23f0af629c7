"""Generic backbones. A backbone maps a batch's ``inputs`` to features and exposes ``out_dim``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from .registry import Registry

BACKBONES: Registry[nn.Module] = Registry("backbone", builtins=("core.tabular",))


@BACKBONES.register("mlp")
class MLPBackbone(nn.Module):
    """A stack of Linear -> LayerNorm -> GELU -> Dropout blocks for vector inputs."""

    def __init__(self, in_dim: int, hidden: Sequence[int] = (256, 256), dropout: float = 0.1) -> None:
        super().__init__()
        if not hidden:
            raise ValueError("mlp backbone needs at least one hidden layer")
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.LayerNorm(width), nn.GELU(), nn.Dropout(dropout)]
            in_dim = width
        self.net = nn.Sequential(*layers)
        self.out_dim = in_dim

    def forward(self, inputs: Tensor) -> Tensor:
        return self.net(inputs.flatten(1).float())
