"""Text label kinds: one registry; core's kinds count their labelled examples through core's task types."""

from __future__ import annotations

import math

import pytest
import torch

from core.errors import ConfigError
from nlp.data import parse_labels
from nlp.label_kinds import IGNORE, LABEL_KINDS, label_kind

NAN = float("nan")
#: per kind: an encoded column with unlabelled examples, and which examples carry a label
COLUMNS = {
    "class": ([0, -1, 2, -1], [True, False, True, False]),
    "multilabel": ([[NAN, NAN], [0.0, NAN], [1.0, 0.0], [NAN, NAN]], [False, True, True, False]),
    "regression": ([1.5, NAN, -3.0, NAN], [True, False, True, False]),
    "token": ([[IGNORE, 1, IGNORE], [IGNORE] * 4, [0], []], [True, False, True, False]),
    "generation": ([[101, 7, 102], [], [101, 102], []], [True, False, True, False]),
}


def test_every_registered_kind_is_covered():
    assert sorted(LABEL_KINDS.names()) == sorted(COLUMNS)


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_labelled_count_matches_the_examples_that_carry_a_label(name):
    column, labelled = COLUMNS[name]
    kind = label_kind(name)
    assert kind.labelled_count(column) == sum(labelled)
    assert kind.labelled_count(column[:0]) == 0


@pytest.mark.parametrize("name", sorted(COLUMNS))
def test_collate_keeps_every_example_and_marks_the_missing_ones(name):
    column, labelled = COLUMNS[name]
    batch = label_kind(name).collate(column, length=4)
    assert len(batch) == len(column)
    for row, carries in zip(batch, labelled, strict=True):
        values = row.reshape(-1)
        seen = ~torch.isnan(values) if values.is_floating_point() else values >= 0
        assert bool(seen.any()) == carries


def test_class_labels_are_integer_ids_and_the_others_as_core_reads_them():
    assert label_kind("class").collate([0, -1], 1).dtype == torch.long
    assert label_kind("regression").collate([1.0, math.nan], 1).dtype == torch.float32


def test_an_unknown_kind_names_the_registered_ones():
    with pytest.raises(ConfigError, match="kind must be one of class, generation, multilabel, regression, token"):
        parse_labels("reviews", {"sentiment": {"column": "label", "kind": "classes"}})
