"""Heads on the encoder's features: pooled-sequence heads and per-token heads."""

from __future__ import annotations

from torch import Tensor, nn

from core.heads import HEADS


def _classifier(in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Sequential:
    if hidden <= 0:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, out_dim))
    return nn.Sequential(
        nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
    )


@HEADS.register("sequence")
class SequenceHead(nn.Module):
    """Pooled sentence vector -> logits (classification, multi-label) or values (regression).

    Args:
        hidden: width of one hidden GELU layer; 0 = a linear layer on the pooled vector.
        dropout: dropout on the pooled vector (and the hidden layer).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = _classifier(in_dim, out_dim, hidden, dropout)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.net(features["pooled"])


@HEADS.register("token")
class TokenHead(nn.Module):
    """Per-token states -> per-token logits ``(B, L, out_dim)`` (NER and other tagging)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = _classifier(in_dim, out_dim, hidden, dropout)

    def forward(self, features: dict[str, Tensor]) -> Tensor:
        return self.net(features["tokens"])
