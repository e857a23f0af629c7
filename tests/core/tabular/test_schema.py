"""Feature columns: numeric columns with stray words, infinities, categorical detection."""

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import DataError
from core.tabular.encoders import TABULAR_ENCODERS
from core.tabular.inputs import TabularInputs
from core.tabular.schema import TabularSchema


def lab_frame(n: int = 50) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"lab": rng.normal(5, 1, n).round(3).astype(object), "site": rng.choice(["a", "b"], n)})


def test_stray_word_in_a_numeric_column_names_column_row_and_value() -> None:
    frame = lab_frame()
    frame.loc[[7, 30], "lab"] = "abc"
    with pytest.raises(DataError, match=r"t.csv: numeric column 'lab' has the non-numeric value 'abc' at index 7 \(2"):
        TabularSchema.fit(frame, ["lab", "site"], source="t.csv")
    schema = TabularSchema.fit(frame, ["lab", "site"], categorical=["lab"], min_category_count=1)
    assert [c.name for c in schema.categorical] == ["lab", "site"]  # declared: the fix the message names


def test_coerced_column_reads_stray_words_as_missing_and_counts_them() -> None:
    frame = lab_frame()
    frame.loc[[7, 30], "lab"] = "abc"
    with pytest.warns(UserWarning, match=r"numeric column 'lab': 2 non-numeric value\(s\) read as missing"):
        schema = TabularSchema.fit(frame, ["lab", "site"], coerce=["lab"], source="t.csv")
    assert [c.name for c in schema.numeric] == ["lab"] and schema.numeric[0].coerce
    new = pd.DataFrame({"lab": ["n/a?", "4.5"], "site": ["a", "b"]})
    with pytest.warns(UserWarning, match=r"new.csv: numeric column 'lab': 1 non-numeric"):
        numeric, _, _ = schema.encode(new, "new.csv")
    assert torch.isnan(numeric[0, 0]) and numeric[1, 0] == 4.5


def test_a_column_of_words_is_categorical() -> None:
    frame = pd.DataFrame({"grade": ["I", "II", "3", "IV"] * 5})
    schema = TabularSchema.fit(frame, ["grade"], min_category_count=1)
    assert [c.name for c in schema.categorical] == ["grade"]


def test_infinities_are_clipped_to_the_training_bounds() -> None:
    frame = pd.DataFrame({"lab": [1.0, 2.0, 3.0, np.inf, 4.0, -np.inf, 5.0, np.nan] * 10})
    schema = TabularSchema.fit(frame, ["lab"], clip_quantile=0.0)
    col = schema.numeric[0]
    assert (col.lo, col.hi) == (1.0, 5.0) and np.isfinite([col.median, col.mean, col.std]).all()
    numeric, _, _ = schema.encode(pd.DataFrame({"lab": [np.inf, -np.inf, 5.0, 1.0]}))
    inputs = TabularInputs(schema, embedding_dim=4)
    values, missing, bins = inputs.numeric(numeric)
    assert torch.equal(values[0], values[2]) and torch.equal(values[1], values[3])  # inf -> hi, -inf -> lo
    assert missing.sum() == 0 and torch.isfinite(bins).all()
    encoder = TABULAR_ENCODERS.build({"name": "mlp"}, schema=schema, dim=8)
    assert torch.isfinite(encoder(numeric, torch.zeros(4, 0, dtype=torch.long))).all()


def test_a_column_with_only_infinities_is_refused() -> None:
    with pytest.raises(DataError, match=r"numeric column 'lab' has no finite value in the training split"):
        TabularSchema.fit(pd.DataFrame({"lab": [np.inf, np.nan]}), ["lab"])
