"""Hard parameter sharing: the whole backbone is shared, each task has its own head.

Caruana, "Multitask Learning", Machine Learning 28 (1997). The default architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from .base import Architecture
from .registry import ARCHITECTURES


@ARCHITECTURES.register("hard")
class HardSharing(Architecture):
    """Backbone once per input batch; every head reads the same features (no weights of its own)."""

    def __init__(self, backbone: nn.Module, tasks: Sequence[str]) -> None:
        super().__init__(tasks)

    def encode(self, backbone: nn.Module, inputs: Any) -> Any:
        return backbone(inputs)

    def decode(self, features: Any, tasks: Sequence[str]) -> dict[str, Any]:
        return dict.fromkeys(tasks, features)

    def spec(self) -> dict[str, Any]:
        return {"name": "hard"}
