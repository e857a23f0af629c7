"""Post-hoc calibration of a trained model: the disease head that carries its calibration and
threshold, and their fitting in place on the validation split (the methods are in
:mod:`medical.calibrators`). :func:`calibrate` is the ``disease`` task type's calibration stage,
so every run (``jointtrain train``, the script, ``compare``) fits it before testing the best model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from core.data import Loading, Source
from core.errors import DataError

from .calibrators import fit_disease
from .metrics import binary_scores, collect_logits


class DiseaseHead(nn.Module):
    """One logit per patient from any registered head, plus its calibration and threshold."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("bias", torch.tensor(0.0))
        self.register_buffer("threshold", torch.tensor(0.5))

    def forward(self, features: Tensor) -> Tensor:
        return self.inner(features)  # raw logits: the loss trains on these

    def probability(self, logits: Tensor) -> Tensor:
        return torch.sigmoid(self.scale.to(logits) * logits.float() + self.bias.to(logits))

    def set_calibration(self, scale: float, bias: float, threshold: float) -> None:
        self.scale.fill_(scale)
        self.bias.fill_(bias)
        self.threshold.fill_(threshold)


def calibrate(
    model: Any, sources: Sequence[Source], loading: Loading = Loading(), tasks: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Fit the calibration and threshold of each disease head in ``tasks`` (default: every one) on
    ``sources`` (the validation split), in place.

    Returns, per disease, the fitted values and the validation ECE before and after.
    """
    diseases = [n for n, t in model.tasks.items() if isinstance(t.head, DiseaseHead) and (tasks is None or n in tasks)]
    if not diseases:
        raise DataError("the model has no disease task to calibrate")
    report: dict[str, dict[str, Any]] = {}
    for name, (logits, labels) in collect_logits(model, sources, loading, diseases).items():
        task = model.tasks[name]
        try:
            fitted = fit_disease(
                logits, labels, task.spec["calibration"], task.spec["threshold"], task.spec["target_sensitivity"]
            )
        except DataError as e:
            raise DataError(f"disease '{name}': {e}") from e
        before = binary_scores(1.0 / (1.0 + np.exp(-logits)), labels)["ece"]
        task.head.set_calibration(fitted["scale"], fitted["bias"], fitted["threshold"])
        after = binary_scores(task.head.probability(torch.as_tensor(logits)).numpy(), labels)["ece"]
        report[name] = {**fitted, "method": task.spec["calibration"], "val_ece_before": before, "val_ece_after": after}
    return report
