"""A task: one head, its loss on the samples that carry its label, and its metrics.

Missing labels are normal. The convention: a float target is missing where it is NaN, an
integer target where it is negative (PyTorch's ``ignore_index=-100`` is one such value).
Loss and metrics only ever see the labelled entries; a batch without any contributes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .errors import DataError

LossFn = Callable[[Tensor, Tensor], Tensor]


def label_mask(target: Tensor) -> Tensor:
    """Elementwise mask of labelled entries (NaN / negative integer = missing)."""
    if target.is_floating_point():
        return ~torch.isnan(target)
    return target >= 0


@dataclass
class Task:
    """What the trainer needs to know about one task.

    ``spec`` is the JSON that rebuilds this task through the task registry; it is what
    ``JointModel.save_pretrained`` writes, so a saved model needs no pickle.
    """

    name: str
    head: nn.Module
    loss_fn: LossFn
    metrics: Mapping[str, Callable[[], Metric]]
    label_key: str
    weight: float = 1.0
    label_names: list[str] | None = None
    spec: dict[str, Any] = field(default_factory=dict)

    @property
    def primary_metric(self) -> str:
        return next(iter(self.metrics))

    def higher_is_better(self) -> dict[str, bool]:
        return {name: bool(factory().higher_is_better) for name, factory in self.metrics.items()}

    def labelled(self, output: Any, target: Any) -> tuple[Any, Any, int]:
        """Keep the labelled entries; returns (output, target, count). Override for structured targets."""
        mask = label_mask(target)
        if output.shape[: target.ndim] != target.shape:
            raise DataError(
                f"task '{self.name}': head output shape {tuple(output.shape)} does not match "
                f"label shape {tuple(target.shape)} (label key '{self.label_key}')"
            )
        return output[mask], target[mask], int(mask.sum())

    def validate_target(self, target: Any) -> None:
        """Raise DataError when labels are out of range; called on every training batch."""

    def loss(self, output: Any, target: Any) -> Tensor | None:
        """Mean loss over labelled entries, or None when the batch has none."""
        self.validate_target(target)
        output, target, count = self.labelled(output, target)
        if count == 0:
            return None
        return self.loss_fn(output, target)

    def new_metrics(self) -> dict[str, Metric]:
        return {name: factory() for name, factory in self.metrics.items()}

    def update_metrics(self, metrics: Mapping[str, Metric], output: Any, target: Any) -> None:
        output, target, count = self.labelled(output, target)
        if count:
            for metric in metrics.values():
                metric.update(output.float(), target)

    def postprocess(self, output: Tensor) -> list[Any]:
        """Per-sample JSON-friendly predictions (used by ``JointModel.predict``)."""
        return output.float().tolist()
