"""Second stage of joint training: fine-tune each task alone, starting from the joint model."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..balancing import build as build_balancer
from ..config import TrainConfig
from ..data import DataBundle, Loading
from ..distributed import DistEnv
from ..model import JointModel
from ..sampling import SAMPLERS
from .builder import restrict_tasks, stage_trainer


def finetune(
    model: JointModel,
    data: DataBundle,
    train: TrainConfig,
    loading: Loading,
    *,
    mode: str,
    steps: int,
    lr_scale: float,
    tasks: list[str],
    out_dir: Path | None,
    env: DistEnv,
) -> dict[str, dict[str, Any]]:
    """For each task: metrics before and after ``steps`` of single-task training.

    ``mode="head"`` freezes the backbone; ``"full"`` trains it too, at ``lr * lr_scale``.
    Fine-tuned models are saved to ``out_dir/finetuned/<task>/final``.
    """
    report: dict[str, dict[str, Any]] = {}
    for task in tasks or list(model.tasks):
        sub_model, sub_data = model.subset([task]), restrict_tasks(data, [task])
        if mode == "head":  # everything but the head: trunk, and this task's branch of the architecture
            sub_model.requires_grad_(False)
            sub_model.heads[task].requires_grad_(True)
        config = dataclasses.replace(
            train, max_steps=steps, lr=train.lr * lr_scale, warmup_steps=0, eval_every=0, early_stopping_patience=0
        )
        sampler = SAMPLERS.build("all" if len(sub_data.train) == 1 else "proportional", seed=train.seed)
        stage_dir = out_dir / "finetuned" / task if out_dir else None
        trainer = stage_trainer(sub_model, sub_data, build_balancer("ew"), sampler, config, loading, stage_dir, env)
        before = {split: trainer.evaluate(split).get(task, {}) for split in ("val", "test") if getattr(sub_data, split)}
        trainer.fit()
        after = {split: trainer.evaluate(split).get(task, {}) for split in before}
        report[task] = {"mode": mode, "steps": steps, "before": before, "after": after}
    return report
