"""Text task types on the shared encoder.

Sequence tasks reuse core's classification / multi-label / regression tasks with the pooled
``sequence`` head; sentence pairs are sequence classification on a source with two text fields.
Token classification predicts one tag per word: labels sit on each word's first sub-token and
every other position is ``-100`` (ignored by the loss and the metrics).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from core.errors import ConfigError
from core.heads import HEADS
from core.task import Task, label_mask
from core.tasks import TASKS, classification, multilabel, regression, task_type

from .metrics import EntityScore


@TASKS.register("sequence_classification")
def sequence_classification(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    multi_label: bool = False,
    head: str | dict[str, Any] = "sequence",
    metrics: Sequence[str] | None = None,
    label_key: str | None = None,
    weight: float = 1.0,
    label_smoothing: float = 0.0,
    label_names: Sequence[str] | None = None,
) -> Task:
    """One label per text (cross-entropy) or, with ``multi_label``, any subset of labels (BCE)."""
    if multi_label:
        return multilabel(
            name,
            backbone,
            num_classes,
            head=head,
            metrics=metrics or ("f1_macro", "accuracy"),
            label_key=label_key,
            weight=weight,
            label_names=label_names,
        )
    return classification(
        name,
        backbone,
        num_classes,
        head=head,
        metrics=metrics or ("accuracy", "f1_macro"),
        label_key=label_key,
        weight=weight,
        label_smoothing=label_smoothing,
        label_names=label_names,
    )


@TASKS.register("pair_classification")
def pair_classification(name: str, backbone: nn.Module, num_classes: int, **kwargs: Any) -> Task:
    """Classification of a text pair (entailment, paraphrase...): the source gives ``text_pair``."""
    return sequence_classification(name, backbone, num_classes, **kwargs)


@TASKS.register("sequence_regression")
def sequence_regression(
    name: str,
    backbone: nn.Module,
    out_dim: int = 1,
    head: str | dict[str, Any] = "sequence",
    loss: str = "mse",
    metrics: Sequence[str] = ("pearson", "spearman", "mae"),
    label_key: str | None = None,
    weight: float = 1.0,
) -> Task:
    """A real value per text (e.g. a similarity or rating score)."""
    return regression(
        name, backbone, out_dim, head=head, loss=loss, metrics=metrics, label_key=label_key, weight=weight
    )


class TokenClassificationTask(Task):
    """Per-word tags; targets ``(B, L)`` with -100 on positions that carry no word label."""

    def validate_target(self, target: Tensor) -> None:
        tags = len(self.label_names or ())
        self.check_range(target, tags, "tag index", f"{tags} tags", "fix the data or the tag list (label_names)")

    def labelled(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor, int]:
        """The sentences with a tagged word, whole: entity spans are read along each one."""
        rows = label_mask(target).any(-1)
        return output[rows], target[rows], int(rows.sum())

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return output.argmax(-1), target

    def postprocess(self, output: Tensor) -> list[Any]:
        """Tag names per sub-token position; ``nlp.predict`` maps them back to words."""
        names = self.label_names or []
        return [[names[i] for i in row] for row in output.argmax(-1).tolist()]


_ENTITY_METRICS = {"entity_f1": "f1", "entity_precision": "precision", "entity_recall": "recall"}


@task_type("token_classification", TokenClassificationTask)
def token_classification(
    name: str,
    backbone: nn.Module,
    label_names: Sequence[str],
    num_classes: int | None = None,
    head: str | dict[str, Any] = "token",
    metrics: Sequence[str] = ("entity_f1", "entity_precision", "entity_recall"),
    label_key: str | None = None,
    weight: float = 1.0,
) -> Task:
    """BIO tagging (NER) scored by exact entity spans; ``label_names`` are the tags (the data gives them)."""
    if num_classes is not None and num_classes != len(label_names):
        raise ConfigError(f"task '{name}': num_classes={num_classes} but {len(label_names)} label_names")
    unknown = [m for m in metrics if m not in _ENTITY_METRICS]
    if unknown or not metrics:
        raise ConfigError(f"task '{name}': unknown metrics {unknown}; valid: {', '.join(_ENTITY_METRICS)}")
    return TokenClassificationTask(
        name=name,
        head=HEADS.build(head, in_dim=backbone.out_dim, out_dim=len(label_names)),
        loss_fn=F.cross_entropy,
        metrics={m: functools.partial(EntityScore, list(label_names), _ENTITY_METRICS[m]) for m in metrics},
        label_key=label_key or name,
        weight=weight,
        label_names=list(label_names),
    )
