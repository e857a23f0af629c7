"""Every metric a task type can report has a direction the suite states (core.metrics.sense)."""

from __future__ import annotations

import importlib

import pytest
from torchmetrics import Metric

from core.errors import ConfigError
from core.metrics import METRICS, Sense, sense

KINDS = {"multiclass": 3, "binary": None, "regression": None}


@pytest.mark.parametrize("name", sorted(METRICS.names()))
def test_every_registered_metric_has_a_direction_and_a_span_or_none(name: str) -> None:
    for kind, classes in KINDS.items():
        try:
            metric = METRICS.get(name)(kind, classes)
        except ConfigError:
            continue  # a classification metric asked for a regression kind
        s = sense(metric)
        assert isinstance(s.higher_is_better, bool)
        assert s.span is None or s.span > 0


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_every_metric_class_of_the_suite_declares_its_direction() -> None:
    for package in ("core", "vision", "nlp", "medical"):
        importlib.import_module(package)
    for module in ("vision.metrics", "nlp.metrics", "medical.metrics"):
        importlib.import_module(module)
    ours = [c for c in _subclasses(Metric) if c.__module__.split(".")[0] in ("core", "vision", "nlp", "medical")]
    assert ours, "no metric class of the suite found"
    for cls in ours:
        declared = getattr(cls, "higher_is_better", None)
        assert isinstance(declared, bool), cls


def test_an_undeclared_direction_is_refused_not_read_as_lower_is_better() -> None:
    class Mystery(Metric):
        higher_is_better = None

        def update(self) -> None: ...

        def compute(self) -> float:
            return 0.0

    with pytest.raises(ConfigError, match="does not say whether higher is better"):
        sense(Mystery())
    assert sense(METRICS.get("pearson")("regression", None)) == Sense(True, 2.0)
