"""Tabular encoders: (numeric [B, Cn] raw floats with NaN/inf, categorical [B, Cc] codes) -> [B, dim].

``mlp``: the schema's inputs flattened into residual blocks. ``ft_transformer``: one token per
column and attention (Gorishniy et al. 2021). Both start from :class:`~core.tabular.inputs.TabularInputs`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from core.errors import ConfigError
from core.registry import Registry

from .inputs import TabularInputs
from .schema import TabularSchema

#: ``(schema, dim, **kwargs) -> nn.Module`` mapping (numeric, categorical) to [B, dim]
TABULAR_ENCODERS: Registry[nn.Module] = Registry("tabular encoder")


class Residual(nn.Module):
    """``x + block(x)``: one residual block as a module of its own (the unit the architectures copy)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


@TABULAR_ENCODERS.register("mlp")
class ResidualMLP(nn.Module):
    """Flattened inputs -> Linear -> residual blocks (LayerNorm, Linear, GELU, Dropout, Linear).

    The input projection (by default) and the residual stream stay free of dropout and each block starts as
    the identity (its last Linear is zero): the encoder starts as a linear model of its inputs
    and keeps that path exact, so a near-linear target is learned to a ridge's error
    (scripts/bench_table_linear.py; dropout on the projection cost 1.5x a ridge's MAE).

    Args:
        depth: residual blocks.
        expansion: hidden width of a block as a multiple of ``dim``.
        dropout: inside each block.
        input_dropout: on the input projection; off by default (see above), while records with many
            redundant lab values (the thyroid demo: macro AUPRC 0.903 with 0.1, 0.887 without) gain
            from it.
        embedding_dim: width of each categorical column's embedding.
    """

    def __init__(
        self, schema: TabularSchema, dim: int, depth: int = 2, expansion: int = 2, dropout: float = 0.1,
        input_dropout: float = 0.0, embedding_dim: int = 8,
    ) -> None:  # fmt: skip
        super().__init__()
        self.inputs = TabularInputs(schema, embedding_dim)
        in_dim = (2 + self.inputs.n_bins) * self.inputs.n_numeric + self.inputs.n_categorical * embedding_dim
        self.stem = nn.Sequential(nn.Linear(in_dim, dim), nn.Dropout(input_dropout))  # saved models name it stem.0
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, dim * expansion),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(dim * expansion, dim),
            )
            for _ in range(depth)
        )
        for block in self.blocks:
            nn.init.zeros_(block[-1].weight)
            nn.init.zeros_(block[-1].bias)
        self.norm = nn.LayerNorm(dim)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        x = self.embed(numeric, categorical)
        for block in self.blocks:
            x = x + block(x)
        return self.finish(x)

    # -- blocks, for the sharing architectures (the tabular and records backbones expose them) ----
    def embed(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        values, missing, bins = self.inputs.numeric(numeric)
        x = torch.cat([values, missing, bins.flatten(1), self.inputs.categorical(categorical).flatten(1)], 1)
        return self.stem(x)

    def block(self, index: int) -> nn.Module:
        return Residual(self.blocks[index])

    def block_dims(self) -> list[int]:
        return [self.norm.normalized_shape[0]] * len(self.blocks)

    def finish(self, x: Tensor) -> Tensor:
        return self.norm(x)


@TABULAR_ENCODERS.register("ft_transformer")
class FeatureTokenizer(nn.Module):
    """FT-Transformer style (Gorishniy et al. 2021): one token per column, a CLS token, attention.

    Numeric token = value * w_j + b_j (+ a learned "missing" vector where the value was
    missing); categorical token = its embedding. The CLS token's output is the feature.
    """

    def __init__(self, schema: TabularSchema, dim: int, depth: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % heads:
            raise ConfigError(f"ft_transformer: dim={dim} must be divisible by heads={heads}")
        self.inputs = TabularInputs(schema, dim)
        n = self.inputs.n_numeric
        self.weight = nn.Parameter(torch.randn(n, dim) / math.sqrt(dim))
        self.bias = nn.Parameter(torch.zeros(n, dim))
        self.missing = nn.Parameter(torch.zeros(n, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)  # fmt: skip
        self.transformer = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        return self.finish(self.transformer(self.embed(numeric, categorical)))

    # -- blocks, for the sharing architectures (the tabular and records backbones expose them) ----
    def embed(self, numeric: Tensor, categorical: Tensor) -> Tensor:
        values, missing, _ = self.inputs.numeric(numeric)
        num_tokens = values.unsqueeze(-1) * self.weight + self.bias + missing.unsqueeze(-1) * self.missing
        tokens = [self.cls.expand(len(values), -1, -1), num_tokens, self.inputs.categorical(categorical)]
        return torch.cat(tokens, 1)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.layers

    def block(self, index: int) -> nn.Module:
        return self.transformer.layers[index]

    def block_dims(self) -> list[int]:
        return [self.norm.normalized_shape[0]] * len(self.transformer.layers)

    def finish(self, tokens: Tensor) -> Tensor:
        return self.norm(tokens[:, 0])
