"""The ``tabular`` backbone: a table row (numeric + categorical cells) -> one feature vector.

Inputs (a batch dict): ``numeric`` [B, Cn] raw floats (NaN = missing), ``categorical`` [B, Cc]
codes, as :meth:`core.tabular.schema.TabularSchema.encode` gives them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from core.backbones import BACKBONES
from core.errors import ConfigError

from .encoders import TABULAR_ENCODERS
from .schema import TabularSchema


@runtime_checkable
class SchemaBackbone(Protocol):
    """A backbone that reads table rows through a fitted schema (None where it reads no table):
    new rows are encoded with it before prediction."""

    @property
    def schema(self) -> TabularSchema | None: ...


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
        self.schema_json, self.encoder_spec = schema, dict(encoder or {"name": "mlp"})
        self.encoder = TABULAR_ENCODERS.build(self.encoder_spec, schema=TabularSchema.from_json(schema), dim=dim)
        self.out_dim = dim

    @property
    def schema(self) -> TabularSchema:
        return TabularSchema.from_json(self.schema_json)

    def forward(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.encoder(inputs["numeric"], inputs["categorical"])

    # -- BlockBackbone (core.backbones): the encoder's blocks, for branched / cross-stitch / MTAN sharing --
    def num_blocks(self) -> int:
        return len(self.encoder.blocks)

    def block_dims(self) -> list[int]:
        return self.encoder.block_dims()

    def stem(self, inputs: dict[str, Tensor]) -> Tensor:
        return self.encoder.embed(inputs["numeric"], inputs["categorical"])

    def block(self, index: int) -> nn.Module:
        return self.encoder.block(index)

    def finish(self, state: Tensor) -> Tensor:
        return self.encoder.finish(state)

    def drop_blocks(self, start: int) -> None:
        del self.encoder.blocks[start:]

    def single_tensor_state(self) -> bool:
        return True

    def export_spec(self) -> dict[str, Any]:
        """The JSON that rebuilds this backbone, fitted schema included."""
        return {"name": "tabular", "schema": self.schema_json, "dim": self.out_dim, "encoder": self.encoder_spec}
