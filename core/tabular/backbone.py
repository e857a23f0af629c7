"""The ``tabular`` backbone: a table row (numeric + categorical cells) -> one feature vector.

Inputs (a batch dict): ``numeric`` [B, Cn] raw floats (NaN = missing), ``categorical`` [B, Cc]
codes, as :meth:`core.tabular.schema.TabularSchema.encode` gives them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from core.backbones import BACKBONES
from core.errors import ConfigError

from .encoders import TABULAR_ENCODERS
from .schema import TabularSchema


@BACKBONES.register("tabular")
class TabularBackbone(nn.Module):
    """A fitted tabular preprocessing followed by a registered encoder.

    Args:
        schema: the fitted preprocessing (supplied by the data: the ``table`` dataset).
        dim: feature width (the heads' input).
        encoder: ``{name: mlp | ft_transformer, **kwargs}``.
    """

    def __init__(self, schema: dict[str, Any] | None = None, dim: int = 128, encoder: dict[str, Any] | None = None):
        super().__init__()
        if schema is None:
            raise ConfigError("tabular backbone: needs a fitted schema, which a table dataset supplies ('table')")
        self.schema_json = schema
        fitted = TabularSchema.from_json(schema)
        self.encoder = TABULAR_ENCODERS.build(encoder or {"name": "mlp"}, schema=fitted, dim=dim)
        self.out_dim = dim

    @property
    def schema(self) -> TabularSchema:
        return TabularSchema.from_json(self.schema_json)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.encoder(inputs["numeric"], inputs["categorical"])
