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


def test_delta_m_on_a_fixed_scale_is_delta_m_on_the_whole_set_and_bounded_on_a_draw():
    from core.evaluation import delta_m
    from core.experiments.intervals import delta_m_on_scale

    hib = {"a": {"auprc": True, "ece": False}, "b": {"accuracy": True}}
    ref = {"a": {"auprc": 0.5, "ece": 0.02}, "b": {"accuracy": 0.9}}
    row = {"a": {"auprc": 0.6, "ece": 0.03}, "b": {"accuracy": 0.88}}
    assert delta_m_on_scale(row, ref, ref, hib) == delta_m(row, ref, hib)
    # a draw whose reference ECE is ~0: Δm on the draw's own scale explodes, on the fixed scale it does not
    draw_ref = {"a": {"auprc": 0.5, "ece": 1e-9}, "b": {"accuracy": 0.9}}
    assert abs(delta_m(row, draw_ref, hib)) > 1e8
    assert abs(delta_m_on_scale(row, draw_ref, ref, hib)) < 100
