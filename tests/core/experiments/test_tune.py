"""Task weight selection: the loss_scale heuristic and jointtrain tune (Optuna samplers, folds, shared studies)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy
import torch
import yaml
from optuna.trial import TrialState

import core
from core.balancing import build
from core.balancing.base import BalancerSetup, StepContext
from core.cli import main
from core.config import dump_config, load_config
from core.errors import ConfigError
from core.experiments.builder import Experiment
from core.experiments.tune import TuneSpec, folds, read_tune_config, tune
from core.experiments.tuning.searches import PRUNERS, SEARCHES, from_spec
from core.experiments.tuning.space import dimensions
from core.spec import from_dict

from ..helpers import toy_config


def setup(balancer: Any, tasks: list[str]) -> None:
    balancer.setup(
        BalancerSetup(tasks=tasks, task_weights=dict.fromkeys(tasks, 1.0), dataset_sizes={}, steps_per_epoch=1)
    )


def test_loss_scale_weights_are_the_normalised_inverse_mean_of_the_first_losses_then_frozen():
    ew = build("ew", heuristic="loss_scale", scale_steps=2)
    setup(ew, ["a", "b"])
    history = [{"a": 2.0, "b": 0.5}, {"a": 4.0, "b": 0.5}, {"a": 100.0, "b": 0.001}]
    applied = []
    for step, values in enumerate(history):
        losses = {t: torch.tensor(v, requires_grad=True) for t, v in values.items()}
        applied.append(ew.backward(losses, StepContext(step=step, backward=lambda total: None, loss_values=values)))
    # after 2 steps: mean losses a=3, b=0.5 -> inverse 1/3, 2 -> normalised to sum 2
    inverse = np.array([1 / 3, 2.0])
    expected = 2 * inverse / inverse.sum()
    assert applied[1] == pytest.approx({"a": expected[0], "b": expected[1]})
    assert applied[2] == applied[1]  # frozen after scale_steps
    # step 0 follows the first losses: inverse 1/2, 2
    first = 2 * np.array([0.5, 2.0]) / 2.5
    assert applied[0] == pytest.approx({"a": first[0], "b": first[1]})
    # the measurement survives a checkpoint round trip
    again = build("ew", heuristic="loss_scale", scale_steps=2)
    setup(again, ["a", "b"])
    again.load_state_dict(ew.state_dict())
    values = {"a": 7.0, "b": 7.0}
    losses = {t: torch.tensor(v) for t, v in values.items()}
    assert again.weights(losses, StepContext(step=3, backward=lambda t: None, loss_values=values)) == applied[1]


def test_bad_heuristic_settings():
    with pytest.raises(ConfigError, match=r"unknown weight heuristic 'loss-scale'.*loss_scale"):
        build("ew", heuristic="loss-scale")
    with pytest.raises(ConfigError, match="scale_steps must be >= 1"):
        build("ew", heuristic="loss_scale", scale_steps=0)


def test_grid_and_random_slots():
    dims = dimensions({"balancing.heuristic": ["uniform", "size"], "train.lr": [0.1, 0.2]})
    points = from_spec(SEARCHES, "grid", seed=0).slots(dims, n_trials=99)
    assert len(points) == 4 and {"balancing.heuristic": "size", "train.lr": 0.2} in points
    assert from_spec(SEARCHES, "random", seed=0).slots(dims, n_trials=3) == [{}, {}, {}]  # drawn when a trial starts
    ranges = dimensions({"balancing.weights.a": {"distribution": "loguniform", "low": 0.1, "high": 10}})
    with pytest.raises(ConfigError, match="grid sampler needs lists"):
        from_spec(SEARCHES, "grid", seed=0).slots(ranges, 1)
    with pytest.raises(ConfigError, match="loguniform distribution needs low > 0"):
        dimensions({"x": {"distribution": "loguniform", "low": 0, "high": 1}})
    with pytest.raises(ConfigError, match=r"unknown tune sampler 'tpee'.*Did you mean 'tpe'"):
        from_spec(SEARCHES, "tpee", seed=0)


def test_values_optuna_cannot_store_round_trip_as_json():
    (dim,) = dimensions({"balancing.weights": [{"digit": 1.0, "parity": 0.1}, {"digit": 0.5}]})
    assert [dim.decode(c) for c in dim.probes()] == [{"digit": 1.0, "parity": 0.1}, {"digit": 0.5}]


def test_folds_partition_each_training_source(tmp_path):
    data = Experiment(toy_config(tmp_path, **{"data.regime": "per_task"})).data
    splits = folds(data, 3, seed=0)
    assert len(splits) == 3
    for s, source in enumerate(data.train):
        held_out = [i for split in splits for i in split.val[s].dataset.indices]
        assert sorted(held_out) == list(range(len(source)))  # every sample held out exactly once
        for split in splits:
            assert not set(split.train[s].dataset.indices) & set(split.val[s].dataset.indices)
            assert split.test == []  # the test split is never used for the choice


def write_tune_config(tmp_path: Path, section: dict[str, Any]) -> Path:
    base = toy_config(tmp_path, **{"train.max_steps": 3, "train.eval_every": 3, "model.backbone.hidden": [16]})
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(dump_config(base)), "tune": section}))
    return path


def test_tune_ranks_candidates_and_writes_the_winning_config(tmp_path, capsys):
    section = {
        "search": "grid",
        "cv": 2,
        "space": {"balancing.heuristic": ["uniform", "loss_scale"], "train.lr": [0.0, 0.01]},
    }
    path = write_tune_config(tmp_path, section)
    assert main(["tune", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ranking" in out and "2-fold cross-validation" in out
    result = yaml.safe_load((tmp_path / "run" / "tune" / "tune.json").read_text())
    means = [t["mean"] for t in result["ranking"]]
    assert means == sorted(means, reverse=True) and len(means) == 4
    assert all(len(t["scores"]) == 2 for t in result["ranking"])
    lr0 = [t for t in result["ranking"] if t["params"]["train.lr"] == 0.0]
    assert all(t["mean"] < result["ranking"][0]["mean"] for t in lr0)  # lr 0 learns nothing
    best = load_config(result["best_config"])  # a valid run config, without the tune section
    top = result["ranking"][0]["params"]
    assert best.balancing["heuristic"] == top["balancing.heuristic"] and best.train.lr == top["train.lr"]


def test_tune_on_the_validation_split(tmp_path):
    path = write_tune_config(tmp_path, {"cv": 0, "space": {"balancing.weights": [{"digit": 1.0, "parity": 0.1}]}})
    result = tune(*read_tune_config(path), log=lambda *_: None)
    assert result["scored_on"] == "the validation split"
    assert load_config(result["best_config"]).balancing["weights"] == {"digit": 1.0, "parity": 0.1}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"space": {}}, "tune.space is empty"),
        ({"space": {"train.lr": [0.1]}, "cv": 1}, "cv must be 0"),
        ({"space": {"train.lr": [0.1]}, "search": "bayes"}, "tune.search must be one of grid, random"),
        ({"space": {"train.lr": [0.1]}, "sampler": "bayes"}, "unknown tune sampler 'bayes'"),
        (
            {"space": {"train.lr": [0.1]}, "pruner": {"name": "median", "n_startup": 2}},
            "tune pruner 'median'.*n_startup",
        ),
        ({"space": {"train.lr": []}}, "empty list"),
        ({"space": {"balancing.temperature": [1.0]}}, r"tune candidate .*unknown argument 'temperature'"),
        ({"space": {"train.lrr": [0.1]}}, "unknown key 'config.train.lrr'"),
    ],
)
def test_bad_tune_config(tmp_path, section, message):
    path = write_tune_config(tmp_path, section)
    with pytest.raises(ConfigError, match=message):
        tune(*read_tune_config(path), log=lambda *_: None)


def cli(*args: str) -> subprocess.Popen[str]:
    """``python -m core.cli`` in a process of its own, importing this checkout."""
    env = {**os.environ, "PYTHONPATH": str(Path(core.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "core.cli", *args], env=env, stdout=subprocess.PIPE, text=True)


def test_two_processes_share_one_sqlite_study_without_running_a_trial_twice(tmp_path):
    space = {"balancing.heuristic": ["uniform", "size", "loss_scale"], "train.lr": [0.003, 0.01]}
    path = write_tune_config(tmp_path, {"sampler": "grid", "space": space})
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    workers = [cli("tune", str(path), "--storage", url, "--study", "shared") for _ in range(2)]
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 6  # the budget, no more
    points = sorted((t.params["balancing.heuristic"], t.params["train.lr"]) for t in study.trials)
    assert points == sorted(itertools.product(space["balancing.heuristic"], space["train.lr"]))  # each once
    dirs = [d for t in study.trials for d in t.user_attrs["run_dirs"]]
    assert len(set(dirs)) == 6 and all((Path(d) / "results.json").is_file() for d in dirs)
    result = json.loads((tmp_path / "run" / "tune" / "tune.json").read_text())
    assert (result["study"], result["storage"], len(result["ranking"])) == ("shared", url, 6)


def test_a_rerun_continues_the_study_where_it_stopped(tmp_path):
    path = write_tune_config(tmp_path, {"search": "grid", "space": {"train.lr": [0.0, 0.003, 0.01]}})

    def stop_after_the_first_trial(line: str) -> None:
        if line.startswith("  trial"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(*read_tune_config(path), log=stop_after_the_first_trial)
    result = tune(*read_tune_config(path), log=lambda *_: None)
    assert sorted(t["params"]["train.lr"] for t in result["ranking"]) == [0.0, 0.003, 0.01]
    assert [t["trial"] for t in result["ranking"] if t["params"]["train.lr"] == 0.0] == [0]  # not run again
    again = tune(*read_tune_config(path), log=lambda *_: None)  # nothing left: the same ranking
    assert again["ranking"] == result["ranking"] and again["left"] == 0


def test_tpe_is_the_default_sampler(tmp_path):
    space = {"train.lr": {"distribution": "loguniform", "low": 1e-3, "high": 1e-2}, "balancing.heuristic": ["size"]}
    result = tune(*read_tune_config(write_tune_config(tmp_path, {"n_iter": 3, "space": space})), log=lambda *_: None)
    assert result["search"] == "tpe" and result["pruner"] == "median" and len(result["ranking"]) == 3
    assert all(1e-3 <= t["params"]["train.lr"] <= 1e-2 for t in result["ranking"])


@pytest.mark.parametrize("search", ["grid", "random"])
def test_the_bundled_tune_config_still_runs(tmp_path, search):
    config = Path(core.__file__).parents[1] / "scripts" / "configs" / "tune_digits.yaml"
    overrides = [f"tune.search={search}", "tune.n_iter=2", "tune.cv=2", "train.max_steps=4", "train.eval_every=4"]
    overrides += ["train.warmup_steps=0", f"output_dir={tmp_path / 'run'}"]
    result = tune(*read_tune_config(config, overrides), log=lambda *_: None)
    assert result["search"] == search and result["scored_on"] == "2-fold cross-validation"
    assert len(result["ranking"]) == (4 if search == "grid" else 2)
    assert all(len(t["scores"]) == 2 and len(t["run_dirs"]) == 2 for t in result["ranking"])


def test_the_trial_of_a_killed_worker_is_run_again_by_the_next_one(tmp_path):
    path = write_tune_config(tmp_path, {"sampler": "grid", "heartbeat_s": 1, "space": {"train.lr": [0.003, 0.01]}})
    longer = ["--set", "train.max_steps=300", "--set", "train.eval_every=300"]
    worker = cli("tune", str(path), *longer)
    url = f"sqlite:///{tmp_path / 'run' / 'tune' / 'study.db'}"
    deadline = time.monotonic() + 300
    while worker.poll() is None and time.monotonic() < deadline:  # wait until it trains its first trial
        # not created yet, or the worker is writing its schema (the race storage() retries)
        with contextlib.suppress(KeyError, sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            if optuna.load_study(study_name="run", storage=url).get_trials(states=(TrialState.RUNNING,)):
                break
        time.sleep(0.2)
    worker.kill()  # SIGKILL: no chance to give the trial back
    worker.wait()
    time.sleep(3.5)  # two heartbeats missed (SQLite's clock counts whole seconds: 2.5 s may read as 2)
    result = tune(*read_tune_config(path, [a for a in longer if a != "--set"]), log=lambda *_: None)
    (lost,) = result["failed"]
    assert lost["trial"] == 0 and "stopped sending heartbeats" in lost["error"]  # failed by the next worker
    assert lost["rerun_as"] in [t["trial"] for t in result["ranking"]]
    assert sorted(t["params"]["train.lr"] for t in result["ranking"]) == [0.003, 0.01]
    assert lost["params"] in [t["params"] for t in result["ranking"] if t["trial"] != 0]


def test_the_documented_tune_section_is_valid():
    docs = (Path(core.__file__).parents[1] / "docs" / "evidence.md").read_text()
    block = next(b for b in docs.split("```yaml\n")[1:] if b.startswith("tune:"))
    spec = from_dict(TuneSpec, yaml.safe_load(block.split("```")[0])["tune"], "tune")
    assert spec.sampler_spec == "tpe" and len(dimensions(spec.space)) == 2
    assert from_spec(PRUNERS, spec.pruner) is not None


def test_without_optuna_tune_says_how_to_install_it(tmp_path):
    code = "import sys; sys.modules['optuna'] = None; from core.cli import main; sys.exit(main(['tune', 'x.yaml']))"
    env = {**os.environ, "PYTHONPATH": str(Path(core.__file__).parents[1])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "pip install 'jointtrain[tune]'" in done.stderr
