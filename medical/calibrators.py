"""Calibration maps and decision-threshold rules: pure functions of one disease's validation logits.

Training with ``pos_weight`` deliberately over-predicts rare diseases; calibration maps each
head's logit z to a probability p = sigmoid(a * z + b) that means what it says:

- ``temperature``: b = 0, a = 1 / T (Guo et al. 2017); keeps the ranking, fixes over-confidence;
- ``platt``: a and b free (Platt 1999); also undoes the shift that ``pos_weight`` introduces.

The decision threshold on the calibrated probability is Youden's J (max sensitivity +
specificity - 1) or the highest threshold reaching a target sensitivity. All of it is written
into buffers of each disease head (by :func:`medical.calibration.calibrate`), so
``model.safetensors`` carries it to ``jointtrain predict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from core.errors import DataError
from core.registry import Registry

#: ``(logits, labels) -> (a, b)`` with p = sigmoid(a * z + b)
CALIBRATORS: Registry[Callable[[np.ndarray, np.ndarray], tuple[float, float]]] = Registry("calibrator")
#: ``(probs, labels, target_sensitivity) -> threshold`` on calibrated probabilities
THRESHOLDS: Registry[Callable[..., float]] = Registry("threshold rule")


def _fit(logits: np.ndarray, labels: np.ndarray, free_bias: bool) -> tuple[float, float]:
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64)
    log_a = torch.zeros((), dtype=torch.float64, requires_grad=True)  # a = exp(log_a) > 0 keeps the ranking
    b = torch.zeros((), dtype=torch.float64, requires_grad=free_bias)
    params = [log_a, b] if free_bias else [log_a]
    optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(log_a.exp() * z + b, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_a.detach().exp()), float(b.detach())


@CALIBRATORS.register("temperature")
def temperature(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return _fit(logits, labels, free_bias=False)


@CALIBRATORS.register("platt")
def platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return _fit(logits, labels, free_bias=True)


@CALIBRATORS.register("none")
def identity(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return 1.0, 0.0


def _roc(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(labels, probs)
    return fpr[1:], tpr[1:], thresholds[1:]  # drop sklearn's "+inf" point (predicts nobody positive)


@THRESHOLDS.register("youden")
def youden(probs: np.ndarray, labels: np.ndarray, target_sensitivity: float = 0.9) -> float:
    """Threshold maximising sensitivity + specificity - 1 (``target_sensitivity`` is not used)."""
    fpr, tpr, thresholds = _roc(probs, labels)
    return float(thresholds[int(np.argmax(tpr - fpr))])


@THRESHOLDS.register("sensitivity")
def sensitivity(probs: np.ndarray, labels: np.ndarray, target_sensitivity: float = 0.9) -> float:
    """The highest threshold whose sensitivity reaches the target (fewest false alarms at that sensitivity)."""
    _, tpr, thresholds = _roc(probs, labels)
    return float(thresholds[int(np.argmax(tpr >= target_sensitivity))])


def fit_disease(
    logits: np.ndarray, labels: np.ndarray, method: str, threshold: str | float, target_sensitivity: float
) -> dict[str, Any]:
    """Calibration (a, b) and threshold from one disease's labelled validation logits."""
    keep = ~np.isnan(labels)
    z, y = logits[keep], labels[keep]
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        raise DataError(
            f"cannot calibrate: the validation split has {positives} positive(s) among {len(y)} labelled "
            "rows (both classes are needed); use a larger val_fraction or calibration 'none' with a fixed threshold"
        )
    a, b = CALIBRATORS.get(method)(z, y)
    probs = 1.0 / (1.0 + np.exp(-(a * z + b)))
    if isinstance(threshold, (int, float)):
        thr = float(threshold)
    else:
        thr = THRESHOLDS.get(threshold)(probs, y, target_sensitivity)
        below = probs[probs < thr]
        # a rule's threshold is a validation probability: halfway down to the next one keeps every
        # validation decision and does not flip that patient when the model computes p in float32
        thr = float((thr + below.max()) / 2) if len(below) else thr
    return {"scale": a, "bias": b, "threshold": thr, "val_n": len(y), "val_positives": positives}
