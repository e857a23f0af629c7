"""A run's lifecycle around the loop: start or resume, log, validate-and-save, interrupt, finish.

:class:`Lifecycle` is a run without a directory (tune's folds, a Python run without ``out_dir``):
it keeps the checkpoint bookkeeping that model selection reads (best score, kept list) and writes
nothing. :class:`DirectoryLifecycle` owns a run directory (``core.rundir``): it holds the lock,
refuses a folder that already holds a run unless resuming, writes ``config.yaml`` and
``metrics.jsonl``, has the checkpoint manager write ``last.pt``, ``best-<step>.pt`` and ``best/``,
writes ``final/``, and at the end scores the best model once (:mod:`.conclude`). Rank 0 writes;
every rank reads the checkpoint it resumes from and joins the collectives.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ..balancing import Balancer
from ..config import TrainConfig
from ..data import Loading
from ..distributed import any_rank, barrier
from ..errors import ConfigError
from ..evaluation import Results
from ..io import load_state
from ..model import JointModel
from ..rundir.checkpoints import CheckpointManager
from ..rundir.directory import RunDir
from ..rundir.metrics_log import RunLog
from ..sampling import TaskSampler
from .conclude import Scoring, conclude


class Lifecycle:
    """A run without a directory: nothing is written, resuming is refused."""

    run: RunDir | None = None

    stop_requested = False  # set by Ctrl-C / SIGTERM: checkpoint at the step boundary and stop

    def __init__(self, scoring: Scoring, keep_best: int) -> None:
        self.scoring = scoring
        self.checkpoints = CheckpointManager(Path("."), Path("."), keep_best, write=False)
        # called with (step, selection score) after each validation; may request_stop() (tune's pruner)
        self.on_validation: list[Callable[[int, float], None]] = []

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The span of ``fit``: the run directory's lock, the open metrics log."""
        yield

    def start(self, resume: bool, run_config: dict[str, Any]) -> dict[str, Any] | None:
        """Check where the run starts; the trainer state to resume from, or None for a new run."""
        if resume:
            raise ConfigError("resume needs an out_dir holding checkpoints/last.pt")
        return None

    def begin(self, step: int, setup: dict[str, Any], run_config: dict[str, Any]) -> None:
        """The state is loaded or seeded on every rank: record how the run (re)starts."""
        barrier(self.scoring.env)

    def log(self, record: dict[str, Any]) -> None:
        """Append one record (train, val) to the metrics log."""

    def validated(self, step: int, score: float | None, results: Results) -> None:
        """A validation's results and score (higher is better; None without a validation split)."""
        if results:
            self.log({"split": "val", "step": step, "score": score, "tasks": results})
        for observe in self.on_validation if score is not None else ():
            observe(step, score)

    def checkpoint(
        self, step: int, score: float | None, state: Callable[[], dict[str, Any]], model: JointModel
    ) -> bool:
        """Save the resumable ``state`` (and ``model`` as ``best/`` when ``score`` is the best so far);
        True when it is. Every rank calls it; rank 0 writes."""
        improved = self.checkpoints.save(step, state, model, score)
        barrier(self.scoring.env)
        return improved

    def request_stop(self) -> bool:
        """Ask the loop to stop after the current step; True if that had been asked already."""
        already, self.stop_requested = self.stop_requested, True
        return already

    def stop_agreed(self, step: int, log_every: int) -> bool:
        """Whether every rank stops now. A signal reaches ranks at different steps, so under DDP the
        flag is all-reduced at log steps only (one tiny collective every ``log_every`` steps) and
        all ranks stop at the same step boundary."""
        env = self.scoring.env
        if not env.enabled:
            return self.stop_requested
        if step % log_every:
            return False
        return any_rank(self.stop_requested, env)

    def finish(
        self, summary: dict[str, Any], model: Callable[[], JointModel], reference: Results | None
    ) -> dict[str, Any]:
        """A finished run (completed or stopped early): save and score its models; the summary, completed."""
        return summary


class DirectoryLifecycle(Lifecycle):
    """A run that owns the directory ``run``."""

    def __init__(self, run: RunDir, scoring: Scoring, keep_best: int) -> None:
        super().__init__(scoring, keep_best)
        self.run, self.main = run, scoring.env.is_main
        self.checkpoints = CheckpointManager(run.checkpoints, run.model("best"), keep_best, write=self.main)
        self.metrics = RunLog(None)
        self.changes: dict[str, Any] | None = None  # allowed config changes of a resumed run

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        with self.run.writing() if self.main else contextlib.nullcontext():
            yield
            self.metrics.close()

    def start(self, resume: bool, run_config: dict[str, Any]) -> dict[str, Any] | None:
        if not resume:
            if self.main:
                self.run.check_new()
            return None
        state = load_state(self.run.last_checkpoint)
        self.changes = self.run.check_resume(state.get("run_config", {}), run_config)
        return state

    def begin(self, step: int, setup: dict[str, Any], run_config: dict[str, Any]) -> None:
        super().begin(step, setup, run_config)
        if not self.main:
            return
        self.metrics = RunLog(self.run)
        self.run.write_config(yaml.safe_dump(run_config, sort_keys=False))
        if self.changes is None:
            self.log(setup)
        else:  # the log keeps one trajectory: records written after the checkpoint go
            dropped = self.metrics.truncate_after(step)
            self.log({"split": "resume", "step": step, "changes": self.changes, "dropped_records": dropped})

    def log(self, record: dict[str, Any]) -> None:
        self.metrics(record)

    def finish(
        self, summary: dict[str, Any], model: Callable[[], JointModel], reference: Results | None
    ) -> dict[str, Any]:
        final = model()  # a collective under FSDP
        if self.main:
            final.save_pretrained(self.run.model("final"))
        if not self.scoring.data.val:  # no validation split: the final model is the best we know
            self.checkpoints.save_best(final)
        barrier(self.scoring.env)
        return conclude(self.run, self.checkpoints, self.scoring, summary, reference)


def default_run_config(
    config: TrainConfig, loading: Loading, model: JointModel, balancer: Balancer, sampler: TaskSampler
) -> dict[str, Any]:
    """The resolved config of a run built in Python (``config.yaml``, compared on resume)."""
    return {
        "train": dataclasses.asdict(config),
        "loading": dataclasses.asdict(loading),
        "model": {k: v for k, v in model.config().items() if k != "extra"},
        "balancing": repr(balancer),
        "sampler": repr(sampler),
    }


def lifecycle(out_dir: str | Path | None, scoring: Scoring, keep_best: int) -> Lifecycle:
    """The lifecycle of a run in ``out_dir``, or of one without a directory."""
    if out_dir is None:
        return Lifecycle(scoring, keep_best)
    return DirectoryLifecycle(RunDir(out_dir), scoring, keep_best)
