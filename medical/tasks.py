"""The ``disease`` task type: core's binary task with pos_weight from the data and a calibrated head.

Labels are read like a binary column (1/0, true/false, yes/no; empty = unknown) and become 0/1
floats, NaN = unknown: core's masking keeps unknown labels out of the loss and the metrics; the
training split's positive / negative counts go into the spec (``pos_weight: auto``).

The head carries the calibration (p = sigmoid(a * z + b)) and the decision threshold as
buffers, fitted on the validation split by :func:`medical.calibration.calibrate`, the type's
calibration stage, which every run fits after training; until then they are the identity and
0.5. Metrics and predictions use calibrated probabilities; a prediction is core's binary record
plus the threshold, ``{"label", "probability", "threshold"}``, where label is the decision at
that threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor, nn

from core.backbones import feature_width
from core.errors import ConfigError
from core.heads import HEADS
from core.tasks import BinaryTask, bce_loss, check_label_names, metric_factories, task_type

from .calibration import DiseaseHead, calibrate
from .calibrators import CALIBRATORS, THRESHOLDS


class DiseaseTask(BinaryTask):
    head: DiseaseHead

    @classmethod
    def train_updates(cls, values: np.ndarray) -> dict[str, Any]:
        seen = values[~np.isnan(values)]
        return {"label_counts": {"positive": int(seen.sum()), "negative": int(len(seen) - seen.sum())}}

    def probabilities(self, output: Tensor) -> Tensor:
        return self.head.probability(output)

    def threshold(self) -> float:
        return float(self.head.threshold)

    def postprocess(self, output: Tensor) -> list[Any]:
        threshold = self.threshold()
        return [{**record, "threshold": threshold} for record in super().postprocess(output)]


def resolve_pos_weight(name: str, pos_weight: float | str | None, label_counts: dict[str, int] | None) -> float | None:
    """``"auto"`` = negatives / positives among the training labels the data reported."""
    if pos_weight != "auto":
        if isinstance(pos_weight, str):
            raise ConfigError(f"task '{name}': pos_weight must be a number, null or 'auto', got '{pos_weight}'")
        return pos_weight
    if not label_counts or label_counts.get("positive", 0) <= 0:
        raise ConfigError(
            f"task '{name}': pos_weight 'auto' needs the training label counts, which the data supplies "
            "(a medical dataset such as 'records' or 'thyroid'); give a number or null instead"
        )
    return label_counts["negative"] / label_counts["positive"]


@task_type("disease", DiseaseTask, calibrate=calibrate)
def disease(
    name: str,
    backbone: nn.Module,
    head: str | dict[str, Any] = "linear",
    metrics: Sequence[str] = ("auroc", "auprc", "brier", "ece"),
    label_key: str | None = None,
    weight: float = 1.0,
    pos_weight: float | str | None = "auto",
    label_counts: dict[str, int] | None = None,
    calibration: str = "platt",
    threshold: str | float = "youden",
    target_sensitivity: float = 0.9,
    label_names: Sequence[str] | None = None,
) -> DiseaseTask:
    """One disease: BCE on one logit, unknown (NaN) labels masked.

    Args:
        pos_weight: BCE weight of positives; ``auto`` = negatives/positives of the training split.
        label_counts: ``{"positive": n, "negative": m}`` of the training split (supplied by the data).
        calibration: ``platt``, ``temperature`` or ``none``, fitted on the validation split.
        threshold: ``youden``, ``sensitivity`` (reach ``target_sensitivity``) or a fixed probability.
        label_names: [negative, positive] names for the prediction's label (the data gives them for yes/no).
    """
    CALIBRATORS.get(calibration)  # fail on a typo now, not after training
    if not isinstance(threshold, (int, float)):
        THRESHOLDS.get(threshold)
    if not 0 < target_sensitivity <= 1:
        raise ConfigError(f"task '{name}': target_sensitivity must be in (0, 1], got {target_sensitivity}")
    in_dim = feature_width(backbone)
    resolved = resolve_pos_weight(name, pos_weight, label_counts)
    return DiseaseTask(
        name=name,
        head=DiseaseHead(HEADS.build(head, in_dim=in_dim, out_dim=1)),
        loss_fn=bce_loss(resolved),
        metrics=metric_factories(metrics, "binary", None),
        label_key=label_key or name,
        weight=weight,
        label_names=check_label_names(label_names, 2, name),
        spec={"pos_weight": resolved},  # the resolved number is saved: a reloaded model needs no label counts
    )
