"""A task: one head, its loss on the samples that carry its label, its metrics, and its labels' meaning.

Missing labels are normal. The convention: a float target is missing where it is NaN, an
integer target where it is negative (PyTorch's ``ignore_index=-100`` is one such value).
Loss and metrics only ever see the labelled entries; a batch without any contributes nothing.

A task type owns its label semantics in one class (see ``core.tasks``):

- ``encode_labels(raw, where, **options)`` (class level: the data reads a raw column before any
  task exists) -> :class:`EncodedLabels`, the per-sample values and the spec they imply
  (class count, label names);
- ``train_updates(values)``: spec completions that must come from the training split only;
- ``labelled_rows(values)``: which samples carry a label (their count sizes samplers/weights);
- ``masked_loss`` -> ``(sum, count)``: the training loss over the labelled entries as device
  tensors, computed without reading anything back to the host (masked entries are weighted 0,
  not selected, so no shape depends on the data);
- ``validate_target(target)``: labels out of range fail here, on the CPU batch (:meth:`Task.check_range`);
- ``labelled`` / ``loss``: selection of the labelled entries and their mean loss (a convenience
  that reads the count);
- ``metric_inputs(output, target) -> (preds, refs)``: what the metrics compare, from the labelled
  entries; ``update_metrics`` (select, transform, update) is written once, here;
- ``postprocess(output)``: the documented per-sample prediction record (docs/tabular.md).

Structured tasks (detection, generation: a target per sample that is not one tensor entry) subclass
:class:`Task` directly: they select their labelled samples on the host in ``labelled`` and score them
through :func:`labelled_loss`, which owns the case of a batch without any.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .distributed import connected_zero
from .errors import ConfigError, DataError
from .metrics import Sense, sense

#: ``(output, target, reduction=...) -> loss``: ``reduction="none"`` gives one loss per entry
LossFn = Callable[..., Tensor]


def label_mask(target: Tensor) -> Tensor:
    """Elementwise mask of labelled entries (NaN / negative integer = missing)."""
    if target.is_floating_point():
        return ~torch.isnan(target)
    return target >= 0


def is_empty(value: Any) -> bool:
    """A raw cell that means "unknown": None, NaN, or a blank string."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value  # NaN
    return isinstance(value, str) and not value.strip()


def bad_value(
    where: str, raw: np.ndarray, bad: np.ndarray, expected: str, row_name: Callable[[int], str] | None = None
) -> DataError:
    """The error for cells a task type cannot read: the first bad row, its value, how many, the fix.
    ``row_name`` names a position as the file does (``row 5 (header = row 1)``)."""
    first = tuple(np.argwhere(bad)[0])
    row = row_name(int(first[0])) if row_name is not None else f"position {first[0]} (the first is 0)"
    return DataError(
        f"{where} has the value {raw[first]!r} at {row} ({int(bad.sum())} such cell(s)); "
        f"labels must be {expected}, or empty (unknown)"
    )


@dataclass
class EncodedLabels:
    """A raw label column as its task type reads it."""

    values: np.ndarray  # [N] or [N, K]; float32 with NaN or int64 with -1 where unknown
    updates: dict[str, Any] = field(default_factory=dict)  # spec the labels imply: num_classes, label_names...


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

    # -- label semantics (class level) ------------------------------------------------------
    @classmethod
    def encode_labels(cls, raw: np.ndarray, where: str, **options: Any) -> EncodedLabels:
        """Read raw cells (None = unknown; [N] or [N, K] objects); ``where`` names file and column."""
        raise ConfigError(f"{where}: task type {cls.__name__} does not read labels from a table column")

    @classmethod
    def train_updates(cls, values: np.ndarray) -> dict[str, Any]:
        """Spec completions computed from the training split's encoded labels only."""
        return {}

    @staticmethod
    def labelled_rows(values: np.ndarray) -> np.ndarray:
        """Per sample: does it carry at least one label?"""
        mask = ~np.isnan(values) if values.dtype.kind == "f" else values >= 0
        return mask.reshape(len(values), -1).any(1)

    @property
    def primary_metric(self) -> str:
        return next(iter(self.metrics))

    def metric_senses(self) -> dict[str, Sense]:
        """Per metric: its direction and span (``core.metrics.sense``)."""
        return {name: sense(factory()) for name, factory in self.metrics.items()}

    def higher_is_better(self) -> dict[str, bool]:
        return {name: s.higher_is_better for name, s in self.metric_senses().items()}

    def align(self, output: Any, target: Any) -> tuple[Any, Any]:
        """Output and target with matching leading shapes; task types squeeze or cast here."""
        if output.shape[: target.ndim] != target.shape:
            raise DataError(
                f"task '{self.name}': head output shape {tuple(output.shape)} does not match "
                f"label shape {tuple(target.shape)} (label key '{self.label_key}')"
            )
        return output, target

    def loss_target(self, target: Tensor) -> Tensor:
        """The target the loss sees (regression standardises it)."""
        return target

    def labelled(self, output: Any, target: Any) -> tuple[Any, Any, int]:
        """Keep the labelled entries; returns (output, target, count). Override for structured targets."""
        output, target = self.align(output, target)
        mask = label_mask(target)
        return output[mask], target[mask], int(mask.sum())

    def select(self, output: Any, target: Any, index: Tensor) -> tuple[Any, Any]:
        """Examples ``index`` (repeats allowed) of a batch's output and target: what a bootstrap over
        test examples rescores. Tensors are indexed on their batch dimension; task types whose output
        holds entries that are not per example override this."""
        return output.index_select(0, index), target.index_select(0, index)

    def validate_target(self, target: Any) -> None:
        """Raise DataError when labels are out of range; the trainer calls it on each CPU batch,
        before the batch moves to the device, so the check costs no device sync."""

    def check_range(
        self, values: Tensor, limit: int, what: str, bound: str, fix: str, lowest: int | None = None
    ) -> None:
        """The "out of range" error, naming the first of ``values`` at or above ``limit`` (or below
        ``lowest``; by default negatives are the missing-label convention, not an error)."""
        bad = values >= limit
        if lowest is not None:
            bad |= values < lowest
        if bool(bad.any()):
            raise DataError(
                f"task '{self.name}': {what} {int(values[bad][0])} is out of range for {bound} "
                f"(label key '{self.label_key}'); {fix}"
            )

    def count_labelled(self, target: Any) -> int:
        """The count ``masked_loss`` returns, read from the CPU batch before it moves (no device sync)."""
        return int(label_mask(target).sum())

    def masked_loss(self, output: Any, target: Any) -> tuple[Tensor, Tensor]:
        """(sum of the per-entry losses over the labelled entries, their count), both on the device.

        Every entry is scored against a placeholder label where its own is missing and weighted 0,
        so no shape depends on which entries are labelled and nothing is read back to the host.
        Needs a ``loss_fn`` that takes ``reduction="none"`` (torch's functional losses do).
        """
        output, target = self.align(output, target)
        mask = label_mask(target)
        keep = mask.reshape(-1)
        flat = output.reshape(target.numel(), *output.shape[target.ndim :])
        # placeholders on both sides: an Inf/NaN output of an unlabelled entry gets an exact 0 gradient
        flat = torch.where(keep.view(-1, *[1] * (flat.ndim - 1)), flat, torch.zeros((), dtype=flat.dtype))
        placeholder = torch.where(mask, target, torch.zeros_like(target))
        per_entry = self.loss_fn(flat, self.loss_target(placeholder).reshape(-1), reduction="none")
        return torch.where(keep, per_entry.float(), 0.0).sum(), keep.sum()

    def loss(self, output: Any, target: Any) -> Tensor | None:
        """Mean loss over labelled entries, or None when the batch has none (reads the count)."""
        self.validate_target(target)
        total, count = self.masked_loss(output, target)
        return total / count if int(count) else None

    def new_metrics(self) -> dict[str, Metric]:
        return {name: factory() for name, factory in self.metrics.items()}

    def metric_inputs(self, output: Any, target: Any) -> tuple[Any, Any]:
        """(predictions, references) the metrics compare, from the labelled entries; task types
        turn logits into probabilities, values or decoded structures here."""
        return output.float(), target

    def update_metrics(self, metrics: Mapping[str, Metric], output: Any, target: Any) -> None:
        """Select the labelled entries, turn them into the metrics' inputs, update every metric."""
        output, target, count = self.labelled(output, target)
        if count:
            preds, refs = self.metric_inputs(output, target)
            for metric in metrics.values():
                metric.update(preds, refs)

    def postprocess(self, output: Tensor) -> list[Any]:
        """Per-sample JSON-friendly predictions (used by ``JointModel.predict``); task types override."""
        return output.float().tolist()


def labelled_loss(
    labelled: tuple[Any, Any, int], loss: Callable[[Any, Any, int], tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor]:
    """``masked_loss`` of a structured task: ``loss(output, target, count) -> (sum, count)`` on the
    labelled samples ``Task.labelled`` selected; with none, a zero whose graph reaches every output
    (so every rank runs the same backward) and a count of 0."""
    output, target, count = labelled
    if count == 0:
        zero = connected_zero(output)
        return zero, torch.zeros((), dtype=torch.long, device=zero.device)
    return loss(output, target, count)
