"""After training: calibrate and score the best model once, write ``results.json`` and the run report.

The best checkpoint (chosen on validation) is loaded back from ``best/`` — what users will load;
its task types' calibration stages (a disease head's probability map and decision threshold) are
fitted on the validation split and saved back into ``best/``; then it is scored once on the test
split (the validation split when there is no test split); a sample of the training split gives
the train–validation gap, and a look-ahead measurement the task affinity. Each result is merged
into ``results.json`` under its own key.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import torch

from ..data import Source, StreamingDataset
from ..distributed import barrier
from ..evaluation import delta_m, evaluate, higher_is_better
from ..hub import write_card
from ..model import JointModel
from ..tasks import calibrate_tasks, calibration_stages
from .rundir import RunDir

if TYPE_CHECKING:
    from .trainer import Trainer


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


def conclude(trainer: Trainer, summary: dict[str, Any]) -> dict[str, Any]:
    run, env, report = trainer.run, trainer.env, trainer.report
    assert run is not None
    best = JointModel.from_pretrained(run.model("best"), map_location=env.device)
    calibration = calibrate_best(trainer, best)
    split = "test" if trainer.data.test else "val"
    scored: dict[str, Any] = {split: trainer.evaluate(split, best), "val": summary["best_val"]}
    if report.train_eval_samples:
        sample = train_sample(trainer.data.train, report.train_eval_samples, trainer.config.seed)
        scored["train"] = evaluate(best, sample, trainer.loading, env, trainer.precision.autocast)
    extra: dict[str, Any] = {"calibration": calibration} if calibration else {}
    if trainer.reference is not None and trainer.config.monitor == "score":
        extra["delta_m"] = delta_m(scored[split], trainer.reference, higher_is_better(best))
    if env.is_main and report.affinity_batches and len(best.tasks) > 1:
        from .affinity import lookahead_affinity

        extra["affinity"] = lookahead_affinity(
            best, trainer.data.train, trainer.loading, report.affinity_batches, report.affinity_lr, trainer.config.seed
        )
    if env.device.type == "cuda":
        extra["peak_memory_mb"] = torch.cuda.max_memory_allocated(env.device) / 2**20
    if env.is_main:
        run_info = {k: v for k, v in summary.items() if k != "best_val"} | {"split": split}
        run.update_results("run", value=run_info)
        run.update_results("higher_is_better", value=higher_is_better(best))
        for name, results in scored.items():
            run.update_results("models", "best", name, value=results)
        for key, value in extra.items():
            run.update_results(key, value=value)
        write_card(run.model("best"))  # the model card now lists the scores just measured
        if report.enabled:
            write_report_safely(run)
    return {**summary, **run.summary()} if env.is_main else summary


def calibrate_best(trainer: Trainer, best: JointModel) -> dict[str, Any]:
    """Fit ``best``'s calibration stages on the validation split (every rank fits the same values
    from the whole split) and save the calibrated model over ``best/``; returns what was fitted."""
    stages = calibration_stages(best)
    if not stages:
        return {}
    if not trainer.data.val:
        names = sorted(n for names in stages.values() for n in names)
        warnings.warn(
            f"no validation split: tasks {names} keep uncalibrated probabilities and default thresholds; "
            "give the data a validation split (val_fraction > 0) to fit them",
            RuntimeWarning,
            stacklevel=2,
        )
        return {}
    fitted = calibrate_tasks(best, trainer.data.val, trainer.loading)
    barrier(trainer.env)  # every rank has read best/ before it is replaced
    if trainer.env.is_main:
        assert trainer.run is not None
        best.save_pretrained(trainer.run.model("best"))
    return fitted


def write_report_safely(run: RunDir) -> None:
    """The report comes after a finished training, which a plotting problem must not fail."""
    from .report import write_report

    try:
        write_report(run.path)
    except Exception as e:  # any failure (matplotlib missing, odd logs): warn, keep the trained run
        warnings.warn(f"run report for {run.path} not written: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
