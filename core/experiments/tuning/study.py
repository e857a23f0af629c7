"""The study: one Optuna study in a database that every worker shares, and how a worker claims a trial.

The first worker creates the study and writes, once, what it searches (the ``tune`` record), the
references its scores are measured against and its budget (waiting trials). Later workers — other
processes, other machines, or a rerun after an interruption — load it, check that they search the
same thing, and claim the waiting trials that are left.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
from optuna.exceptions import DuplicatedStudyError, UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ...errors import ConfigError

SCHEMA_ATTEMPTS = 5  # opening a new database while another worker creates its tables
READY_WAIT_S = 600.0  # how long a worker waits for the creating worker to measure its references and write the budget


def storage(url: str, heartbeat_s: int) -> optuna.storages.BaseStorage:
    """An Optuna database from its URL. A worker's running trial records a heartbeat every
    ``heartbeat_s`` seconds; one silent for twice that (a killed process, a lost machine) is failed by
    the next worker that looks and its values go back into the budget (Optuna's retry callback)."""
    sqlite = url.startswith("sqlite")
    for attempt in range(SCHEMA_ATTEMPTS):
        try:
            db = optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": {"timeout": 60}} if sqlite else {},
                heartbeat_interval=heartbeat_s,
                grace_period=2 * heartbeat_s,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=None),
            )
            break
        except Exception as e:  # SQLAlchemy / driver errors: a bad URL or an unreachable server
            if racing(e) and attempt + 1 < SCHEMA_ATTEMPTS:
                time.sleep(0.5)
                continue
            raise ConfigError(f"tune storage '{shown(url)}' cannot be opened: {e}") from e
    if sqlite:
        serialize(db.engine)
    return db


def racing(error: Exception) -> bool:
    """Whether opening a new database failed only because another worker was setting it up at the
    same moment: both create its tables ("already exists") or both record its schema version (a
    unique-key clash). The later one finds everything in place when it opens the database again."""
    from sqlalchemy.exc import IntegrityError

    return isinstance(error, IntegrityError) or "already exists" in str(error)


def serialize(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it begins (SQLAlchemy's recipe).

    Optuna claims a waiting trial by reading its state and updating it in one transaction, with
    SELECT ... FOR UPDATE, which SQLite ignores; and Python's sqlite3 begins the transaction only
    at the UPDATE, so two processes could both read WAITING and both run the trial. With
    ``BEGIN IMMEDIATE`` the second waits until the first has committed and then reads RUNNING."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def no_implicit_transactions(connection: Any, record: Any) -> None:
        connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the listeners are closed, new ones get them


def shown(url: str) -> str:
    """The URL without its password (it goes to the screen and to tune.json)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: nothing to hide that we know of
        return url


def open_study(
    db: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
    record: dict[str, Any],
    references: Callable[[], list[Any]],
    slots: list[dict[str, Any]],
) -> optuna.Study:
    """Create the study with its record, references and budget, or load it and check its record."""
    try:
        study = optuna.create_study(storage=db, study_name=name, sampler=sampler, pruner=pruner, direction="maximize")
    except DuplicatedStudyError:
        study = optuna.load_study(storage=db, study_name=name, sampler=sampler, pruner=pruner)
        ready(study)
        check_record(study, record)
        return study
    study.set_user_attr("tune", record)
    study.set_user_attr("references", references())
    for params in slots:
        study.enqueue_trial(params)
    study.set_user_attr("budget", len(slots))  # written last: the study is ready
    return study


def ready(study: optuna.Study) -> None:
    """Wait until the worker that created the study has written its budget."""
    deadline = time.monotonic() + READY_WAIT_S
    while "budget" not in study.user_attrs:
        if time.monotonic() > deadline:
            raise ConfigError(
                f"study '{study.study_name}' has no budget recorded: the process that created it stopped before "
                "writing it. Delete the study (or its database) or give another tune.study name"
            )
        time.sleep(0.5)


def check_record(study: optuna.Study, record: dict[str, Any]) -> None:
    """A worker may only join a study that searches the same space, the same way, on the same data."""
    recorded, own = flat(study.user_attrs["tune"]), flat(record)
    differ = sorted(k for k in {*recorded, *own} if recorded.get(k) != own.get(k))
    if differ:
        details = "; ".join(f"{k}: study {recorded.get(k)!r}, this config {own.get(k)!r}" for k in differ)
        raise ConfigError(
            f"study '{study.study_name}' was created by another search ({details}). Give this search its own "
            "tune.study name (or --output-dir / --storage), or rerun with the study's settings to continue it"
        )


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"config": {"train": {"lr": 1}}}`` -> ``{"config.train.lr": 1}``: differences name their key."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def claim(study: optuna.Study) -> optuna.Trial | None:
    """Take one waiting trial of the budget (None when none is left). The WAITING -> RUNNING change is
    atomic in the database, so two workers never get the same trial. Trials of lost workers are
    failed first, which puts their values back as waiting trials.

    The trial's heartbeat is recorded before the claim: Optuna never fails a running trial that has
    no heartbeat, so a worker killed between its claim and its first beat would hold the trial forever.
    A beat on a trial that another worker claims first only tells that worker's trial is alive."""
    optuna.storages.fail_stale_trials(study)
    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            study._storage.record_heartbeat(waiting._trial_id)  # type: ignore[attr-defined]
            if study._storage.set_trial_state_values(waiting._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, waiting._trial_id)
        except UpdateFinishedTrialError:  # finished by another worker between the read and the claim
            continue
    return None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, every_s: float) -> Iterator[None]:
    """Record that ``trial``'s worker is alive every ``every_s`` seconds while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name=f"tune-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def planned(trial: FrozenTrial) -> dict[str, Any]:
    """The values a trial runs with: those it has asked for, or, when its worker was lost before asking,
    those its slot of the budget fixes (a grid point; none for a sampler's slot)."""
    return trial.params or trial.system_attrs.get("fixed_params", {})


def give_back(study: optuna.Study, trial: optuna.Trial, error: str) -> None:
    """An unfinished trial (interrupted, crashed) fails and its values go back into the budget, so a
    rerun runs them (what Optuna's ``RetryFailedTrialCallback`` does for lost workers)."""
    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)
    study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
