"""Post-hoc calibration of a trained model: each disease head's map and threshold fitted in place
on the validation split (the methods are in :mod:`medical.calibrators`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from core.data import Loading, Source
from core.errors import DataError

from .calibrators import fit_disease
from .metrics import binary_scores, collect_logits
from .tasks import DiseaseTask


def calibrate(model: Any, sources: Sequence[Source], loading: Loading = Loading()) -> dict[str, dict[str, Any]]:
    """Fit every disease head's calibration and threshold on ``sources`` (the validation split), in place.

    Returns, per disease, the fitted values and the validation ECE before and after.
    """
    diseases = [name for name, task in model.tasks.items() if isinstance(task, DiseaseTask)]
    if not diseases:
        raise DataError("the model has no disease task to calibrate")
    report: dict[str, dict[str, Any]] = {}
    for name, (logits, labels) in collect_logits(model, sources, loading, diseases).items():
        task: DiseaseTask = model.tasks[name]
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
