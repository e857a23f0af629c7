"""Table prediction reads new rows through the backbone's fitted schema (a declared capability)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch import nn

from core.backbones import MLPBackbone
from core.errors import DataError
from core.model import JointModel
from core.tabular.backbone import SchemaBackbone, TabularBackbone
from core.tabular.predict import encode_rows
from core.tabular.schema import TabularSchema
from core.task import Task

FRAME = pd.DataFrame({"x": [1.0, 2.0, None, 4.0], "site": ["a", "b", "a", "c"]})


def _model(backbone: nn.Module) -> JointModel:
    return JointModel(backbone, [Task("y", nn.Linear(8, 1), nn.functional.mse_loss, {}, "y")])


def test_rows_are_encoded_with_the_backbones_own_schema():
    schema = TabularSchema.fit(FRAME, ["x", "site"], min_category_count=1)
    backbone = TabularBackbone(schema.to_json(), dim=8)
    assert isinstance(backbone, SchemaBackbone)
    numeric, categorical, _ = schema.encode(FRAME, "rows")
    encoded = encode_rows(_model(backbone), FRAME, "rows")
    torch.testing.assert_close(encoded["numeric"], numeric, rtol=0, atol=0, equal_nan=True)
    assert encoded["categorical"].equal(categorical)


def test_a_backbone_without_a_schema_is_refused():
    backbone = MLPBackbone(2, hidden=(8,))
    assert not isinstance(backbone, SchemaBackbone)
    with pytest.raises(DataError, match=r"rows: this model's backbone \(MLPBackbone\) has no tabular schema"):
        encode_rows(_model(backbone), FRAME, "rows")
