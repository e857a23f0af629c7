"""jointtrain medical: several diseases predicted at once from patient records and images.

Importing the package registers its components: the ``records`` backbone (tabular and/or image
encoders, fused), the ``disease`` task type, the ``records`` and ``thyroid`` datasets, the
``records`` predictor and the ``auprc`` / ``brier`` / ``ece`` metrics. The tabular part is
core's (:mod:`core.tabular`).
"""

from . import calibration, calibrators, data, fusion, metrics, predict, tasks, thyroid
from .calibration import calibrate
from .data import records_bundle

__all__ = [
    "calibrate",
    "calibration",
    "calibrators",
    "data",
    "fusion",
    "metrics",
    "predict",
    "records_bundle",
    "tasks",
    "thyroid",
]
