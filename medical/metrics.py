"""Binary-risk metrics: AUPRC, Brier score and expected calibration error (registered in METRICS),
plus one function that scores probability arrays the same way for the model and the baselines.

AUROC is core's. ECE uses 15 equal-width bins of the positive-class probability, weighted by
bin size (torchmetrics' ``BinaryCalibrationError``), so it measures whether "30 % risk" means
30 % of such patients are positive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torchmetrics
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
)

from core.distributed import DistEnv
from core.errors import ConfigError
from core.evaluation import eval_outputs
from core.metrics import METRICS

ECE_BINS = 15


def _binary_only(kind: str, name: str) -> None:
    if kind not in ("binary", "multilabel"):
        raise ConfigError(f"metric '{name}' is for binary / multi-label tasks, not '{kind}'")


class BrierScore(Metric):
    """Mean squared error between the predicted probability and the 0/1 label."""

    higher_is_better = False
    plot_lower_bound, plot_upper_bound = 0.0, 1.0  # its span, for model selection (core.metrics.sense)
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: Tensor, target: Tensor) -> None:
        self.total += ((probs.double() - target.double()) ** 2).sum()
        self.count += target.numel()

    def compute(self) -> Tensor:
        return self.total / self.count.clamp_min(1)


@METRICS.register("auprc")
def auprc(kind: str, num_classes: int | None = None) -> Metric:
    _binary_only(kind, "auprc")
    return torchmetrics.classification.BinaryAveragePrecision()


@METRICS.register("brier")
def brier(kind: str, num_classes: int | None = None) -> Metric:
    _binary_only(kind, "brier")
    return BrierScore()


@METRICS.register("ece")
def ece(kind: str, num_classes: int | None = None) -> Metric:
    _binary_only(kind, "ece")
    return torchmetrics.classification.BinaryCalibrationError(n_bins=ECE_BINS, norm="l1")


def binary_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """AUROC, AUPRC, Brier and ECE of probabilities against labels (NaN labels ignored), with counts.

    Ranking metrics are NaN when the labelled entries hold one class only (undefined).
    """
    keep = ~np.isnan(labels)
    p = torch.as_tensor(probs[keep], dtype=torch.float64)
    y = torch.as_tensor(labels[keep]).long()
    positives = int(y.sum())
    both = 0 < positives < len(y)
    return {
        "auroc": float(binary_auroc(p, y)) if both else float("nan"),
        "auprc": float(binary_average_precision(p, y)) if both else float("nan"),
        "brier": float(((p - y) ** 2).mean()) if len(y) else float("nan"),
        "ece": float(binary_calibration_error(p, y, n_bins=ECE_BINS)) if len(y) else float("nan"),
        "n": len(y),
        "positives": positives,
    }


def macro(per_disease: dict[str, dict[str, Any]], keys: Sequence[str] = ("auroc", "auprc", "brier", "ece")) -> dict:
    """Unweighted mean over diseases of each metric, skipping diseases where it is undefined."""
    out = {}
    for k in keys:
        values = [m[k] for m in per_disease.values() if not np.isnan(m[k])]
        out[k] = float(np.mean(values)) if values else float("nan")
    return out


def collect_logits(
    model: Any, sources: Sequence[Any], loading: Any, tasks: Sequence[str] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw logits and labels (NaN = unknown) per task over every source that labels it (the
    evaluation pass, ``core.evaluation.eval_outputs``, on the model's device)."""
    wanted = list(tasks) if tasks is not None else list(model.tasks)
    logits: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    labels: dict[str, list[np.ndarray]] = {t: [] for t in wanted}
    env = DistEnv(device=next(model.parameters()).device)
    for batch, outputs in eval_outputs(model, sources, loading, env, tasks=wanted):
        for t, output in outputs.items():
            logits[t].append(output.float().reshape(-1).cpu().numpy())
            labels[t].append(batch[model.tasks[t].label_key].float().reshape(-1).cpu().numpy())
    return {t: (np.concatenate(logits[t]), np.concatenate(labels[t])) for t in wanted if logits[t]}
