"""The shared study: each trial of the budget is claimed once; workers join only the same search."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch.distributed as dist
from optuna.trial import TrialState

from core.errors import ConfigError
from core.experiments.tuning.study import claim, give_back, open_study, planned, storage

from ...helpers import spawn


def make(
    url: str,
    record: dict[str, Any] | None = None,
    slots: int = 40,
    heartbeat_s: int = 60,
    fixed: dict[str, Any] | None = None,
) -> optuna.Study:
    return open_study(
        storage(url, heartbeat_s=heartbeat_s),
        "s",
        optuna.samplers.RandomSampler(seed=0),
        optuna.pruners.NopPruner(),
        record or {"space": {"x": [1, 2]}},
        lambda: [{"a": {"accuracy": 0.1}}],
        [dict(fixed or {}) for _ in range(slots)],
    )


def worker(rank: int, nprocs: int, port: int, url: str) -> None:
    """Claim and finish trials as fast as possible: the race the database must settle."""
    study = make(url)
    while (trial := claim(study)) is not None:
        trial.set_user_attr("worker", rank)
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))


def opener(rank: int, nprocs: int, port: int, folder: str) -> None:
    """Open fresh databases all at the same moment: every process sets up the same tables."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=nprocs)
    for i in range(8):
        dist.barrier()
        storage(f"sqlite:///{folder}/{i}.db", heartbeat_s=60)
    dist.destroy_process_group()


def test_workers_that_open_a_new_database_at_the_same_moment_all_get_it(tmp_path: Path):
    spawn(opener, str(tmp_path), nprocs=4, timeout_s=240)  # a clash on the schema version failed one of them
    assert optuna.storages.RDBStorage(f"sqlite:///{tmp_path / '7.db'}").get_all_studies() == []


def test_two_processes_claim_every_trial_of_the_budget_exactly_once(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make(url)  # created here: both workers load it and race for its 40 waiting trials
    spawn(worker, url, nprocs=2, timeout_s=240)
    trials = make(url).get_trials()
    assert len(trials) == 40 and all(t.state == TrialState.COMPLETE for t in trials)  # none run twice, none extra
    assert {t.user_attrs["worker"] for t in trials} <= {0, 1}


def test_a_worker_joins_only_the_same_search_and_reads_the_recorded_references(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    make(url, slots=2)
    again = make(url, slots=5)  # a rerun: the budget stays the one recorded
    assert again.user_attrs["budget"] == 2 and len(again.trials) == 2
    assert again.user_attrs["references"] == [{"a": {"accuracy": 0.1}}]
    with pytest.raises(ConfigError, match=r"study 's' was created by another search \(space.x: study \[1, 2\], this"):
        make(url, record={"space": {"x": [1, 3]}})


def test_an_unfinished_trial_fails_and_its_values_go_back_into_the_budget(tmp_path: Path):
    study = make(f"sqlite:///{tmp_path / 'study.db'}", slots=1)
    trial = claim(study)
    assert trial is not None and claim(study) is None  # the only waiting trial is taken
    x = trial.suggest_float("x", 0.0, 1.0)
    give_back(study, trial, "interrupted")
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and failed.user_attrs["error"] == "interrupted"
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == failed.number
    again = claim(study)
    assert again is not None and again.suggest_float("x", 0.0, 1.0) == x  # the same values, run again


def test_a_worker_killed_right_after_its_claim_loses_the_trial_to_the_next_one(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    lost = claim(make(url, slots=1, heartbeat_s=1, fixed={"x": 0.25}))  # then nothing: no heartbeat, no suggest
    assert lost is not None
    time.sleep(3.5)  # past the grace period of two heartbeats (SQLite's clock counts whole seconds)
    study = make(url, slots=1, heartbeat_s=1, fixed={"x": 0.25})
    again = claim(study)  # Optuna fails only running trials that have a heartbeat: the claim recorded one
    assert again is not None and again.number != lost.number
    failed = study.get_trials()[lost.number]
    assert failed.state == TrialState.FAIL and failed.params == {}  # killed before it asked for its values
    assert planned(failed) == {"x": 0.25} == planned(study.get_trials()[again.number])  # its slot's, run again
