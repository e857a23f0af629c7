import json

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import DataError
from core.tabular.encoders import TABULAR_ENCODERS
from core.tabular.inputs import TabularInputs
from core.tabular.schema import MISSING, RESERVED, UNKNOWN, TabularSchema, warn_unknown

from .helpers import records_frame


def fitted(frame: pd.DataFrame) -> TabularSchema:
    return TabularSchema.fit(frame, ["age", "creatinine", "smoker", "site"], min_category_count=1, source="t.csv")


def test_fit_detects_kinds_and_uses_training_rows_only() -> None:
    frame = records_frame(200)
    schema = fitted(frame.iloc[:100])
    assert [c.name for c in schema.numeric] == ["age", "creatinine"]
    assert [c.name for c in schema.categorical] == ["smoker", "site"]
    creat = schema.numeric[1]
    assert creat.median == pytest.approx(float(np.nanmedian(frame["creatinine"].iloc[:100])))
    assert schema.categorical[0].vocab == ["former", "no", "yes"]


def test_json_round_trip_is_exact() -> None:
    schema = fitted(records_frame(120))
    text = json.dumps(schema.to_json())
    assert TabularSchema.from_json(json.loads(text)) == schema


def test_numeric_impute_indicator_clip_standardise() -> None:
    train = pd.DataFrame({"lab": [1.0, 2.0, 3.0, 4.0, np.nan] * 20})
    schema = TabularSchema.fit(train, ["lab"], clip_quantile=0.0)
    col = schema.numeric[0]
    inputs = TabularInputs(schema, embedding_dim=4)
    numeric, _, _ = schema.encode(pd.DataFrame({"lab": [np.nan, 2.0, 1e6]}))
    values, missing, bins = inputs.numeric(numeric)
    assert missing[:, 0].tolist() == [1.0, 0.0, 0.0]
    # missing -> median; an outlier is clipped to the training maximum before standardising
    expected = (torch.tensor([col.median, 2.0, col.hi]) - col.mean) / col.std
    assert torch.allclose(values[:, 0], expected.float())
    # piecewise-linear bins: all ones up to the value's bin, a fraction inside it, zeros above,
    # each centred on its training mean
    k = len(col.edges) - 1
    assert torch.allclose(bins[2, 0] + inputs.bin_centre[0, :k], torch.ones(k))
    plain = bins[0, 0] + inputs.bin_centre[0, :k]
    assert plain.tolist() == plain.sort(descending=True).values.tolist()
    assert 0 < (bins[1, 0] + inputs.bin_centre[0, :k]).sum() < k
    seen, _, _ = schema.encode(train.dropna())
    assert torch.allclose(inputs.numeric(seen)[2].mean(0), torch.zeros(1, k), atol=1e-6)


def test_skewed_non_negative_lab_is_log_transformed() -> None:
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"tsh": rng.lognormal(0, 1.5, 500), "age": rng.uniform(20, 80, 500)})
    schema = TabularSchema.fit(train, ["tsh", "age"])
    assert [c.log for c in schema.numeric] == [True, False]


def test_unseen_category_goes_to_unknown_bucket_and_is_counted() -> None:
    schema = fitted(records_frame(100))
    frame = records_frame(5).assign(smoker=["yes", "pipe", None, "cigar", "no"])
    _, codes, unknown = schema.encode(frame, "new.csv")
    vocab = schema.categorical[0].vocab
    assert codes[:, 0].tolist() == [RESERVED + vocab.index("yes"), UNKNOWN, MISSING, UNKNOWN, RESERVED + 1]
    assert unknown == {"smoker": [1, 3]}
    with pytest.warns(UserWarning, match=r"new.csv: column 'smoker': 2 value\(s\) unseen"):
        warn_unknown(unknown, "new.csv")


def test_rare_training_category_trains_the_unknown_embedding() -> None:
    frame = pd.DataFrame({"c": ["a"] * 10 + ["b"] * 2})
    schema = TabularSchema.fit(frame, ["c"], min_category_count=5)
    assert schema.categorical[0].vocab == ["a"]


def test_non_numeric_value_names_column_row_and_file() -> None:
    schema = fitted(records_frame(100))
    frame = records_frame(6).astype({"creatinine": object})
    frame.loc[4, "creatinine"] = "high"
    with pytest.raises(
        DataError, match=r"new.csv: numeric column 'creatinine' has the non-numeric value 'high' at index 4"
    ):
        schema.encode(frame, "new.csv")


def test_missing_feature_column_is_named() -> None:
    schema = fitted(records_frame(100))
    with pytest.raises(DataError, match=r"new.csv: missing feature column\(s\) \['site'\]"):
        schema.encode(records_frame(5).drop(columns="site"), "new.csv")


@pytest.mark.parametrize("name", TABULAR_ENCODERS.names())
def test_every_encoder_maps_rows_to_dim(name: str) -> None:
    schema = fitted(records_frame(100))
    encoder = TABULAR_ENCODERS.build({"name": name}, schema=schema, dim=16)
    numeric, codes, _ = schema.encode(records_frame(7))
    out = encoder(numeric, codes)
    assert out.shape == (7, 16) and torch.isfinite(out).all()
    out.sum().backward()
