"""After training: calibrate and score the best model once, write ``results.json`` and the run report.

The best checkpoint (chosen on validation) is loaded back from ``best/`` — what users will load;
its task types' calibration stages (a disease head's probability map and decision threshold) are
fitted on the validation split and saved back into ``best/``; then it is scored once on the test
split (the validation split when there is no test split); a sample of the training split gives
the train–validation gap, and a look-ahead measurement the task affinity. Each result is merged
into ``results.json`` under its own key.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..config import ReportConfig
from ..data import DataBundle, Loading, Source, StreamingDataset
from ..distributed import DistEnv, barrier
from ..evaluation import Results, delta_m, evaluate, higher_is_better
from ..model import JointModel
from ..reports.run_report import write_report_safely
from ..rundir.checkpoints import CheckpointManager
from ..rundir.directory import RunDir
from ..tasks import calibrate_tasks, calibration_stages
from .affinity import lookahead_affinity


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What scoring the best model needs, fixed when the trainer is built."""

    data: DataBundle
    loading: Loading
    env: DistEnv
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    seed: int
    monitor: str  # train.monitor: delta_m is reported when the score is the model selection's measure
    report: ReportConfig

    def evaluate(self, model: JointModel, sources: list[Source]) -> Results:
        return evaluate(model, sources, self.loading, self.env, self.autocast)


def train_sample(sources: list[Source], samples: int, seed: int) -> list[Source]:
    """At most ``samples`` seeded random training examples per source (-1 = all)."""
    out = []
    for s in sources:
        if isinstance(s.dataset, StreamingDataset):  # a stream (core.streams) reads its own
            out.append(dataclasses.replace(s, dataset=s.dataset.training_sample(samples, seed)))
        elif samples < 0:
            out.append(s)
        else:
            index = torch.randperm(len(s), generator=torch.Generator().manual_seed(seed))[: min(samples, len(s))]
            out.append(dataclasses.replace(s, dataset=torch.utils.data.Subset(s.dataset, index.tolist())))
    return out


def conclude(
    run: RunDir, checkpoints: CheckpointManager, scoring: Scoring, summary: dict[str, Any], reference: Results | None
) -> dict[str, Any]:
    """Score the best model of a finished run once and write ``results.json`` (rank 0) and the report;
    returns ``summary`` completed by ``results.json``'s flat view. Every rank joins the evaluations."""
    data, env, report = scoring.data, scoring.env, scoring.report
    best = JointModel.from_pretrained(checkpoints.best_model_dir, map_location=env.device)
    calibration = calibrate_best(best, scoring, checkpoints)
    split = "test" if data.test else "val"
    scored: dict[str, Any] = {split: scoring.evaluate(best, getattr(data, split)), "val": summary["best_val"]}
    if report.train_eval_samples:
        scored["train"] = scoring.evaluate(best, train_sample(data.train, report.train_eval_samples, scoring.seed))
    extra: dict[str, Any] = {"calibration": calibration} if calibration else {}
    if reference is not None and scoring.monitor == "score":
        extra["delta_m"] = delta_m(scored[split], reference, higher_is_better(best))
    if env.is_main and report.affinity_batches and len(best.tasks) > 1:
        extra["affinity"] = lookahead_affinity(
            best, data.train, scoring.loading, report.affinity_batches, report.affinity_lr, scoring.seed
        )
    if env.device.type == "cuda":
        extra["peak_memory_mb"] = torch.cuda.max_memory_allocated(env.device) / 2**20
    if not env.is_main:
        return summary
    run_info = {k: v for k, v in summary.items() if k != "best_val"} | {"split": split}
    run.update_results("run", value=run_info)
    run.update_results("higher_is_better", value=higher_is_better(best))
    for name, results in scored.items():
        run.update_results("models", "best", name, value=results)
    for key, value in extra.items():
        run.update_results(key, value=value)
    checkpoints.refresh_card()  # the model card now lists the scores just measured
    if report.enabled:
        write_report_safely(run)
    return {**summary, **run.summary()}


def calibrate_best(best: JointModel, scoring: Scoring, checkpoints: CheckpointManager) -> dict[str, Any]:
    """Fit ``best``'s calibration stages on the validation split (every rank fits the same values
    from the whole split) and save the calibrated model over ``best/``; returns what was fitted."""
    stages = calibration_stages(best)
    if not stages:
        return {}
    if not scoring.data.val:
        names = sorted(n for names in stages.values() for n in names)
        warnings.warn(
            f"no validation split: tasks {names} keep uncalibrated probabilities and default thresholds; "
            "give the data a validation split (val_fraction > 0) to fit them",
            RuntimeWarning,
            stacklevel=2,
        )
        return {}
    fitted = calibrate_tasks(best, scoring.data.val, scoring.loading)
    barrier(scoring.env)  # every rank has read best/ before it is replaced
    checkpoints.save_best(best)
    return fitted
