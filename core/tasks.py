"""Generic task types: classification, binary, multi-label and regression on pooled features.

Each factory receives the task name and the built backbone (for its ``out_dim``) plus the
user's spec, and returns a :class:`Task` whose ``spec`` rebuilds it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError, DataError
from .heads import HEADS
from .metrics import METRICS
from .registry import Registry
from .task import Task, label_mask

TASKS: Registry[Task] = Registry("task type")


def metric_factories(names: Sequence[str], kind: str, num_classes: int | None) -> dict[str, Any]:
    if not names:
        raise ConfigError("a task needs at least one metric")
    return {n: functools.partial(METRICS.get(n), kind, num_classes) for n in names}


def _head(spec: str | dict[str, Any], backbone: nn.Module, out_dim: int) -> nn.Module:
    in_dim = getattr(backbone, "out_dim", None)
    if not isinstance(in_dim, int):
        raise ConfigError(f"backbone {type(backbone).__name__} has no integer 'out_dim' for a pooled head")
    return HEADS.build(spec, in_dim=in_dim, out_dim=out_dim)


def _names(label_names: Sequence[str] | None, count: int, task: str) -> list[str] | None:
    if label_names is not None and len(label_names) != count:
        raise ConfigError(f"task '{task}': {len(label_names)} label_names given for {count} classes")
    return list(label_names) if label_names is not None else None


class ClassificationTask(Task):
    """Single-label multi-class: integer targets in [0, num_classes), negative = missing."""

    def validate_target(self, target: Tensor) -> None:
        num_classes = self.spec["num_classes"]
        bad = target >= num_classes
        if bool(bad.any()):
            raise DataError(
                f"task '{self.name}': label {int(target[bad][0])} is out of range for "
                f"num_classes={num_classes} (label key '{self.label_key}'); fix the data or num_classes"
            )

    def postprocess(self, output: Tensor) -> list[Any]:
        probs = output.float().softmax(-1)
        names = self.label_names
        return [
            {"label": names[i] if names else i, "index": i, "probs": p.tolist()}
            for i, p in zip(probs.argmax(-1).tolist(), probs, strict=True)
        ]


class BinaryTask(Task):
    """One logit per label; targets 0/1 (float, NaN = missing). Also the multi-label case."""

    def validate_target(self, target: Tensor) -> None:
        target = target.float()
        seen = target[label_mask(target)]
        if bool(((seen != 0) & (seen != 1)).any()):
            raise DataError(f"task '{self.name}': labels must be 0, 1 or NaN (label key '{self.label_key}')")

    def labelled(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
        if output.ndim == target.ndim + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        return super().labelled(output, target.float())

    def update_metrics(self, metrics: Any, output: Tensor, target: Tensor) -> None:
        output, target, count = self.labelled(output, target)
        if count:
            for metric in metrics.values():
                metric.update(output.float().sigmoid(), target.long())

    def postprocess(self, output: Tensor) -> list[Any]:
        return output.float().sigmoid().tolist()


class RegressionTask(Task):
    """Float targets (NaN = missing); outputs are squeezed to the target's shape."""

    def labelled(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
        if output.ndim == target.ndim + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        return super().labelled(output, target.float())


@TASKS.register("classification")
def classification(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    head: str | dict[str, Any] = "linear",
    metrics: Sequence[str] = ("accuracy", "f1_macro"),
    label_key: str | None = None,
    weight: float = 1.0,
    label_smoothing: float = 0.0,
    label_names: Sequence[str] | None = None,
) -> Task:
    """Multi-class classification with cross-entropy."""
    if num_classes < 2:
        raise ConfigError(f"task '{name}': num_classes must be >= 2, got {num_classes}")
    spec = {
        "type": "classification",
        "num_classes": num_classes,
        "head": head,
        "metrics": list(metrics),
        "label_key": label_key or name,
        "weight": weight,
        "label_smoothing": label_smoothing,
        "label_names": _names(label_names, num_classes, name),
    }
    return ClassificationTask(
        name=name,
        head=_head(head, backbone, num_classes),
        loss_fn=functools.partial(F.cross_entropy, label_smoothing=label_smoothing),
        metrics=metric_factories(metrics, "multiclass", num_classes),
        label_key=label_key or name,
        weight=weight,
        label_names=spec["label_names"],
        spec=spec,
    )


def bce_loss(pos_weight: float | None) -> Any:
    if pos_weight is None:
        return F.binary_cross_entropy_with_logits

    def loss(output: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(output, target, pos_weight=output.new_tensor(pos_weight))

    return loss


@TASKS.register("binary")
def binary(
    name: str,
    backbone: nn.Module,
    head: str | dict[str, Any] = "linear",
    metrics: Sequence[str] = ("auroc", "accuracy"),
    label_key: str | None = None,
    weight: float = 1.0,
    pos_weight: float | None = None,
) -> Task:
    """Binary classification with BCE on one logit; ``pos_weight`` counters class imbalance."""
    spec = {
        "type": "binary",
        "head": head,
        "metrics": list(metrics),
        "label_key": label_key or name,
        "weight": weight,
        "pos_weight": pos_weight,
    }
    return BinaryTask(
        name=name,
        head=_head(head, backbone, 1),
        loss_fn=bce_loss(pos_weight),
        metrics=metric_factories(metrics, "binary", None),
        label_key=label_key or name,
        weight=weight,
        spec=spec,
    )


@TASKS.register("multilabel")
def multilabel(
    name: str,
    backbone: nn.Module,
    num_labels: int,
    head: str | dict[str, Any] = "linear",
    metrics: Sequence[str] = ("auroc", "f1_macro"),
    label_key: str | None = None,
    weight: float = 1.0,
    label_names: Sequence[str] | None = None,
) -> Task:
    """Several independent binary labels per sample; each entry may be missing (NaN)."""
    spec = {
        "type": "multilabel",
        "num_labels": num_labels,
        "head": head,
        "metrics": list(metrics),
        "label_key": label_key or name,
        "weight": weight,
        "label_names": _names(label_names, num_labels, name),
    }
    return BinaryTask(
        name=name,
        head=_head(head, backbone, num_labels),
        loss_fn=F.binary_cross_entropy_with_logits,
        metrics=metric_factories(metrics, "multilabel", None),
        label_key=label_key or name,
        weight=weight,
        label_names=spec["label_names"],
        spec=spec,
    )


_REGRESSION_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}


@TASKS.register("regression")
def regression(
    name: str,
    backbone: nn.Module,
    out_dim: int = 1,
    head: str | dict[str, Any] = "linear",
    loss: str = "mse",
    metrics: Sequence[str] = ("mae", "pearson"),
    label_key: str | None = None,
    weight: float = 1.0,
) -> Task:
    """Real-valued targets; ``loss`` is one of mse, l1, huber."""
    if loss not in _REGRESSION_LOSSES:
        raise ConfigError(f"task '{name}': unknown regression loss '{loss}'; valid: {', '.join(_REGRESSION_LOSSES)}")
    spec = {
        "type": "regression",
        "out_dim": out_dim,
        "head": head,
        "loss": loss,
        "metrics": list(metrics),
        "label_key": label_key or name,
        "weight": weight,
    }
    return RegressionTask(
        name=name,
        head=_head(head, backbone, out_dim),
        loss_fn=_REGRESSION_LOSSES[loss],
        metrics=metric_factories(metrics, "regression", None),
        label_key=label_key or name,
        weight=weight,
        spec=spec,
    )


def build_task(name: str, spec: dict[str, Any], backbone: nn.Module) -> Task:
    """Build a task from its config entry: ``{"type": ..., **kwargs}``."""
    spec = dict(spec)
    if "type" not in spec:
        raise ConfigError(f"task '{name}' needs a 'type'; valid types: {', '.join(TASKS.names())}")
    task_type = spec.pop("type")
    return TASKS.build({"name": task_type, **spec}, name=name, backbone=backbone)
