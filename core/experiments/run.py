"""From a RunConfig to a trained, evaluated, saved model: what ``jointtrain train`` does."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import RunConfig
from ..distributed import DistEnv, init_distributed
from ..model import JointModel
from ..reports.run_report import write_report_safely
from ..rundir.directory import RunStatus
from .builder import Experiment
from .finetune import finetune


def train(config: RunConfig, resume: bool = False, env: DistEnv | None = None) -> dict[str, Any]:
    """Train (the trainer selects the best checkpoint on validation, scores it once on test and
    writes results.json and the report), then the optional fine-tuning stage, whose results the
    report includes: it is written once, after that stage."""
    env = env or init_distributed(config.train.device)
    # a fine-tuning stage adds to results.json: the report is written once, after it
    report = dataclasses.replace(config.report, enabled=False) if config.finetune is not None else None
    trainer = Experiment(config).trainer(env, report=report)
    summary = trainer.fit(resume=resume)
    run = trainer.run
    if not RunStatus(summary["status"]).finished or config.finetune is None or run is None:
        return summary
    f = config.finetune
    best = JointModel.from_pretrained(run.model("best"), map_location=env.device)
    result = finetune(
        best,
        trainer.data,
        config.train,
        config.loading,
        mode=f.mode,
        steps=f.steps,
        lr_scale=f.lr_scale,
        tasks=f.tasks,
        out_dir=run.path,
        env=env,
    )
    if env.is_main:
        run.update_results("finetune", value=result)
        if config.report.enabled:
            write_report_safely(run)
    return {**summary, "finetune": result}
