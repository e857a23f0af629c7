"""A trial reports every validation score to its study; the pruner stops a hopeless one early."""

from __future__ import annotations

from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from core.config import dump_config
from core.experiments.tune import read_tune_config, tune

from ...helpers import toy_config


def test_the_median_pruner_stops_a_hopeless_trial_at_its_first_validation(tmp_path: Path):
    base = toy_config(tmp_path, **{"train.max_steps": 40, "train.eval_every": 10, "model.backbone.hidden": [16]})
    section = {
        "sampler": "grid",  # in this order: two sound learning rates finish, then a hopeless one
        "space": {"train.lr": [0.003, 0.004, 0.0]},
        "pruner": {"name": "median", "n_startup_trials": 2},
    }
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(dump_config(base)), "tune": section}))
    result = tune(*read_tune_config(path), log=lambda *_: None)
    assert [t["params"]["train.lr"] for t in result["ranking"]] == [0.004, 0.003]
    assert all(t["steps"] == [40] for t in result["ranking"])
    (pruned,) = result["pruned"]
    assert pruned["params"] == {"train.lr": 0.0} and pruned["steps"] == [10]  # stopped at the first validation
    study = optuna.load_study(study_name=result["study"], storage=f"sqlite:///{tmp_path / 'run/tune/study.db'}")
    trial = study.trials[2]
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [10]
    completed = [t.intermediate_values[10] for t in study.trials[:2]]
    assert trial.intermediate_values[10] < min(completed)  # every trial measured against the same reference
    metrics = (tmp_path / "run/tune/run/trial-2/metrics.jsonl").read_text()
    assert '"step": 10' in metrics and '"step": 20' not in metrics  # its own run directory, cut short
