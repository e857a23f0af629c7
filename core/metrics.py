"""Metric factories (torchmetrics), keyed by name; each knows whether higher is better."""

from __future__ import annotations

from typing import Any

import torchmetrics
from torchmetrics import Metric

from .errors import ConfigError
from .registry import Registry

METRICS: Registry[Metric] = Registry("metric")

# Multi-label targets are masked elementwise (a missing entry drops one label, not the sample),
# so multi-label metrics are computed over the flattened labelled entries as binary (micro) ones.
_CLASSIFICATION_KINDS = ("multiclass", "binary", "multilabel")


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
