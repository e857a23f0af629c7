"""Each task type reads raw label cells itself: encodings, unknowns, errors naming row and value."""

import numpy as np
import pandas as pd
import pytest
import torch

from core.backbones import BACKBONES
from core.errors import ConfigError, DataError
from core.tabular.labels import label_columns, read_labels
from core.tasks import BinaryTask, ClassificationTask, MultilabelTask, RegressionTask, build_task


def cells(*values: object) -> np.ndarray:
    return np.array(values, dtype=object)


def test_string_classes_get_sorted_ids_and_names() -> None:
    out = ClassificationTask.encode_labels(cells("b", None, "a", "c", " ", "a"), "t.csv: label column 'y'")
    assert out.values.tolist() == [1, -1, 0, 2, -1, 0]
    assert out.updates == {"num_classes": 3, "label_names": ["a", "b", "c"]}


def test_declared_classes_fix_order_and_refuse_other_values() -> None:
    out = ClassificationTask.encode_labels(cells("low", "high", None), "w", classes=["low", "mid", "high"])
    assert out.values.tolist() == [0, 2, -1] and out.updates["label_names"] == ["low", "mid", "high"]
    message = r"t.csv: label column 'y' has the value 'hgih' at position 1 \(the first is 0\) \(1 such cell"
    with pytest.raises(DataError, match=message):
        ClassificationTask.encode_labels(cells("low", "hgih"), "t.csv: label column 'y'", classes=["low", "high"])


def test_integer_ids_as_pandas_floats_with_nan_and_negative_unknowns() -> None:
    column = pd.Series([2.0, np.nan, 0.0, -1.0, 1.0]).astype(object)
    out = ClassificationTask.encode_labels(column.where(column.notna(), None).to_numpy(), "w")
    assert out.values.dtype == np.int64 and out.values.tolist() == [2, -1, 0, -1, 1]
    assert out.updates == {"num_classes": 3}


def test_fractional_class_id_is_refused() -> None:
    with pytest.raises(DataError, match=r"has the value 1.5 at position 1 "):
        ClassificationTask.encode_labels(cells(1, 1.5, "x"), "w", classes=[0, 1])


def test_float_class_targets_fail_with_the_fix_not_a_torch_dtype_error() -> None:
    backbone = BACKBONES.build({"name": "mlp", "in_dim": 4, "hidden": [8]})
    task = build_task("c", {"type": "classification", "num_classes": 3}, backbone)
    with pytest.raises(DataError, match=r"task 'c': class labels .* are floats; give integer ids with -1"):
        task.loss(torch.randn(2, 3), torch.tensor([1.0, float("nan")]))


def test_binary_reads_common_spellings_and_a_declared_positive() -> None:
    out = BinaryTask.encode_labels(cells(1, 0, "1.0", "True", "false", None, 1.0), "w")
    assert np.array_equal(out.values, [1, 0, 1, 1, 0, np.nan, 1], equal_nan=True) and out.updates == {}
    words = BinaryTask.encode_labels(cells("Yes", "no", None), "w")
    assert words.values[:2].tolist() == [1, 0] and words.updates == {"label_names": ["no", "yes"]}
    named = BinaryTask.encode_labels(cells("Sick", "well", "sick"), "w", positive="sick")
    assert named.values.tolist() == [1, 0, 1] and named.updates == {"label_names": ["well", "Sick"]}
    with pytest.raises(DataError, match=r"holds 3 distinct values"):
        BinaryTask.encode_labels(cells("sick", "well", "dead"), "w", positive="sick")
    with pytest.raises(DataError, match=r"w has the value 'maybe' at position 2 .* set 'positive'"):
        BinaryTask.encode_labels(cells(1, 0, "maybe"), "w")


def test_multilabel_from_columns_or_a_separated_column() -> None:
    frame = pd.DataFrame({"a": [1, 0, None], "b": [0, 1, 1]})
    [spec] = label_columns({"tags": {"type": "multilabel", "columns": ["a", "b"]}})
    out = read_labels(frame, spec, "t.csv")
    assert np.array_equal(out.values, [[1, 0], [0, 1], [np.nan, 1]], equal_nan=True)
    assert out.updates == {"num_labels": 2, "label_names": ["a", "b"]}
    joined = MultilabelTask.encode_labels(cells("x|y", None, "-", "y"), "w", separator="|")
    assert np.array_equal(joined.values, [[1, 1], [np.nan, np.nan], [0, 0], [0, 1]], equal_nan=True)
    assert joined.updates["label_names"] == ["x", "y"]


def test_regression_refuses_words_and_infinities_and_learns_its_scale() -> None:
    out = RegressionTask.encode_labels(cells(1.5, None, "2", 10), "w")
    assert np.array_equal(out.values, [1.5, np.nan, 2.0, 10.0], equal_nan=True)
    assert RegressionTask.train_updates(out.values) == pytest.approx({"target_mean": 4.5, "target_std": 3.8944404})
    with pytest.raises(DataError, match=r"w has the value 'abc' at position 1 .* finite numbers"):
        RegressionTask.encode_labels(cells(1.0, "abc"), "w")
    with pytest.raises(DataError, match=r"has the value inf at position 0 "):
        RegressionTask.encode_labels(cells(float("inf"), 1.0), "w")


def test_label_specs_are_checked_against_the_task_type() -> None:
    with pytest.raises(ConfigError, match=r"labels.y \(binary\) got an unknown argument 'classes'"):
        label_columns({"y": {"type": "binary", "classes": ["a", "b"]}})
    with pytest.raises(ConfigError, match=r"unknown task type 'regresion'.*Did you mean 'regression'"):
        label_columns({"y": "regresion"})
    with pytest.raises(ConfigError, match=r"labels.y needs a 'type'"):
        label_columns({"y": {"column": "z"}})
