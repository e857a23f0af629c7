"""Metric factories (torchmetrics), keyed by name, and what the suite knows about every metric:
whether higher is better and over what span its values lie (:func:`sense`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torchmetrics
from torchmetrics import Metric

from .errors import ConfigError
from .registry import Registry

METRICS: Registry[Metric] = Registry("metric")

# Multi-label targets are masked elementwise (a missing entry drops one label, not the sample),
# so multi-label metrics are computed over the flattened labelled entries as binary (micro) ones.
_CLASSIFICATION_KINDS = ("multiclass", "binary", "multilabel")

#: Directions torchmetrics leaves undeclared (``higher_is_better = None``), by metric class name.
#: The one place the suite states them: ``bool(None)`` would read as lower-is-better.
DIRECTIONS: dict[str, bool] = {
    "PearsonCorrCoef": True,
    "ConcordanceCorrCoef": True,
    "KendallRankCorrCoef": True,
    "CosineSimilarity": True,
}


@dataclass(frozen=True)
class Sense:
    """How to read a metric: its direction, and the width of its range (None when unbounded)."""

    higher_is_better: bool
    span: float | None


def sense(metric: Metric) -> Sense:
    """A metric's :class:`Sense`, from :data:`DIRECTIONS` or the metric's own declaration and its
    ``plot_lower_bound`` / ``plot_upper_bound``; a metric that declares no direction is refused."""
    name = type(metric).__name__
    declared = DIRECTIONS.get(name, getattr(metric, "higher_is_better", None))
    if not isinstance(declared, bool):
        raise ConfigError(
            f"metric {name} does not say whether higher is better; set its class attribute "
            "higher_is_better, or add it to core.metrics.DIRECTIONS"
        )
    low, high = getattr(metric, "plot_lower_bound", None), getattr(metric, "plot_upper_bound", None)
    bounded = low is not None and high is not None and math.isfinite(high - low) and high > low
    return Sense(declared, float(high - low) if bounded else None)


def _classification_task(kind: str, num_classes: int | None) -> dict[str, Any]:
    if kind == "multiclass":
        return {"task": "multiclass", "num_classes": num_classes}
    if kind in ("binary", "multilabel"):
        return {"task": "binary"}
    raise ConfigError(f"classification metrics need kind in {_CLASSIFICATION_KINDS}, got '{kind}'")


@METRICS.register("accuracy")
def accuracy(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.Accuracy(**_classification_task(kind, num_classes))


@METRICS.register("f1_macro")
def f1_macro(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.F1Score(**_classification_task(kind, num_classes), average="macro")


@METRICS.register("auroc")
def auroc(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.AUROC(**_classification_task(kind, num_classes))


@METRICS.register("mse")
def mse(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.MeanSquaredError()


@METRICS.register("mae")
def mae(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.MeanAbsoluteError()


@METRICS.register("pearson")
def pearson(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.PearsonCorrCoef()


@METRICS.register("spearman")
def spearman(kind: str, num_classes: int | None = None) -> Metric:
    return torchmetrics.SpearmanCorrCoef()
