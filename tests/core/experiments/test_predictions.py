"""Saved per-example test predictions, rescored on resampled examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.experiments.builder import Experiment
from core.experiments.predictions import collect, predictions
from core.experiments.run import train
from core.model import JointModel
from core.rundir.directory import RunDir

from ..helpers import toy_config


def test_rescored_predictions_match_the_run_and_a_by_hand_bootstrap(tmp_path):
    config = toy_config(tmp_path, **{"train.max_steps": 20})
    train(config)
    experiment = Experiment(config)
    preds = predictions(Path(config.output_dir), experiment.data.test, config.loading, torch.device("cpu"))
    saved = json.loads((Path(config.output_dir) / "results.json").read_text())["models"]["best"]["test"]
    for task, p in preds.items():  # fast path, each example once: the run's own test metrics
        assert p.score() == pytest.approx({m: v for m, v in saved[task].items() if m != "loss"}, abs=1e-6)
    # a resample: accuracy recomputed by hand from the repeated examples
    p = preds["digit"]
    n = sum(b.size for b in p.batches)
    counts = np.random.default_rng(0).multinomial(n, np.full(n, 1 / n))
    logits = torch.cat([b.output for b in p.batches])
    labels = torch.cat([b.target for b in p.batches])
    hits = (logits.argmax(1) == labels).numpy()
    assert p.score({"digits": counts})["accuracy"] == pytest.approx((hits * counts).sum() / counts.sum(), abs=1e-6)
    # reloaded from predictions.pt, the same numbers
    again = predictions(Path(config.output_dir), experiment.data.test, config.loading, torch.device("cpu"))
    assert again["digit"].score({"digits": counts}) == p.score({"digits": counts})


def test_predictions_are_made_again_when_the_best_model_is_another_one(tmp_path):
    config = toy_config(tmp_path, **{"train.max_steps": 20})
    train(config)
    run, test, cpu = Path(config.output_dir), Experiment(config).data.test, torch.device("cpu")
    first = predictions(run, test, config.loading, cpu)["digit"]
    # another best model in the same place, as a resumed run or a merged baseline chosen again writes it
    best = RunDir(run).model("best")
    model = JointModel.from_pretrained(best)
    with torch.no_grad():
        *_, bias = (p for n, p in model.heads["digit"].named_parameters() if n.endswith("bias"))
        bias.add_(torch.arange(10.0))
    model.save_pretrained(best)
    again = predictions(run, test, config.loading, cpu)["digit"]
    fresh = collect(model, test, config.loading)["digit"]
    assert all(torch.equal(a.output, f.output) for a, f in zip(again.batches, fresh, strict=True))
    assert not all(torch.equal(a.output, f.output) for a, f in zip(again.batches, first.batches, strict=True))
