"""The gradient-boosting baseline is tuned on validation before it is compared, and scores test once."""

from __future__ import annotations

from core.tabular import TablePreparation
from medical.baseline import gradient_boosting
from medical.data import records_bundle

from .helpers import records_frame


def test_baseline_picks_its_hyperparameters_on_validation():
    data = records_bundle(
        records_frame(400),
        ["renal", "cardiac"],
        preparation=TablePreparation(features=["age", "creatinine", "smoker", "site"]),
    )
    grid = {"max_iter": [5, 60], "learning_rate": [0.1]}
    report = gradient_boosting(data.train, data.val, data.test, ["renal", "cardiac"], grid=grid)
    for disease in ("renal", "cardiac"):
        assert report[disease]["params"]["max_iter"] in (5, 60) and report[disease]["auroc"] > 0.7
