"""Seeds x paired bootstrap intervals: no difference where there is none."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.experiments.builder import Experiment
from core.experiments.intervals import paired_bootstrap
from core.experiments.predictions import predictions
from core.experiments.run import train

from ..helpers import toy_config


def test_interval_includes_zero_for_identical_runs_with_different_seeds(tmp_path):
    rows: dict[str, list[Any]] = {"a": [], "b": []}
    for seed in range(4):
        config = toy_config(
            tmp_path / f"s{seed}",
            **{
                "train.seed": seed,
                "train.max_steps": 60,
                "tasks": {"digit": {"type": "classification", "num_classes": 10}},
                "data.tasks": ["digit"],
            },
        )
        train(config)
        experiment = Experiment(config)
        rows["a" if seed < 2 else "b"].append(
            predictions(Path(config.output_dir), experiment.data.test, config.loading, torch.device("cpu"))
        )
    hib = {"digit": {"accuracy": True, "f1_macro": True}}
    result = paired_bootstrap(rows, "a", hib, replicates=100)
    assert result["b"]["tasks"]["digit"]["low"] < 0 < result["b"]["tasks"]["digit"]["high"]
    assert result["b"]["delta_m"]["low"] < 0 < result["b"]["delta_m"]["high"]
