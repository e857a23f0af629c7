"""jointtrain medical: several diseases predicted at once from patient records and images.

Importing the package registers its components: the ``records`` backbone (tabular and/or image
encoders, fused), the ``disease`` task type, the ``records`` and ``thyroid`` datasets, the
``records`` predictor and the ``auprc`` / ``brier`` / ``ece`` metrics.
"""

from . import calibration, data, fusion, metrics, predict, tabular, tasks, thyroid
from .calibration import calibrate
from .data import records_bundle
from .tabular import TabularSchema

__all__ = [
    "TabularSchema",
    "calibrate",
    "calibration",
    "data",
    "fusion",
    "metrics",
    "predict",
    "records_bundle",
    "tabular",
    "tasks",
    "thyroid",
]
