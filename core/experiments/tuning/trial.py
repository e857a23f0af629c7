"""One trial: train the candidate config on each fold in a run directory of its own, report every
validation score to the study and stop early when its pruner says so."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from ...config import RunConfig
from ...data import DataBundle
from ...evaluation import Results
from ...rundir.directory import RunStatus
from ..builder import Experiment


@dataclass
class Outcome:
    """What a trial's fits came to: its mean best score, or where it was pruned / interrupted."""

    status: str  # "complete" | "pruned" | "interrupted"
    scores: list[float] = field(default_factory=list)  # best validation score per fold
    steps: list[int] = field(default_factory=list)  # optimizer steps each fold ran
    run_dirs: list[str] = field(default_factory=list)


def run_trial(
    trial: optuna.Trial, config: RunConfig, splits: list[DataBundle], references: list[Results], out: Path
) -> Outcome:
    """Fold ``f``'s validation at step ``s`` is reported as step ``f * max_steps + s``, so the pruner
    compares each fold's scores with the same fold's scores of earlier trials."""
    # a trial's job is its score: no report, affinity or train-set pass (`jointtrain report DIR` writes one later)
    quiet = {"train.progress": False, "report.enabled": False, "report.affinity_batches": 0}
    experiment = Experiment(config).with_overrides({**quiet, "report.train_eval_samples": 0})
    outcome = Outcome("complete")
    for f, (split, reference) in enumerate(zip(splits, references, strict=True)):
        run_dir = out / f"fold-{f}" if len(splits) > 1 else out
        trainer = experiment.trainer(data=split, out_dir=run_dir, reference=reference)
        offset = f * config.train.max_steps

        def observe(step: int, score: float, offset: int = offset, trainer: Any = trainer) -> None:
            if not math.isfinite(score):
                return  # a diverged fit ends with a NaN objective (a failed trial), not a pruned one
            trial.report(score, offset + step)
            if trial.should_prune():
                outcome.status = "pruned"
                trainer.request_stop()

        trainer.life.on_validation.append(observe)
        summary = trainer.fit()
        outcome.steps.append(int(summary["step"]))
        outcome.run_dirs.append(str(run_dir))
        if outcome.status == "pruned":
            return outcome
        if not RunStatus(summary["status"]).finished:
            outcome.status = "interrupted"
            return outcome
        best = summary["best_score"]
        outcome.scores.append(float("nan") if best is None else float(best))
    return outcome
