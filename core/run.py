"""From a RunConfig to a trained, evaluated, saved model: what ``jointtrain train`` does."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from . import plugins
from .backbones import BACKBONES
from .balancing import BALANCERS
from .checkpoint import atomic_write_json, atomic_write_text
from .config import RunConfig, dump_config
from .data import DATASETS, DataBundle, Source
from .distributed import DistEnv, init_distributed
from .errors import ConfigError
from .evaluation import delta_m, evaluate, higher_is_better
from .finetune import finetune
from .model import JointModel
from .sampling import SAMPLERS
from .tasks import build_task
from .trainer import Trainer, seed_everything

#: sections that must match for a run directory to be resumed
_IDENTITY = ("model", "tasks", "data", "balancing", "sampler")


def restrict_tasks(data: DataBundle, tasks: list[str]) -> DataBundle:
    """The data restricted to ``tasks``: a config may train a subset of the tasks a dataset labels
    (single-task baselines do); sources left with no task are dropped."""

    def keep(sources: list[Source]) -> list[Source]:
        kept = [dataclasses.replace(s, tasks=[t for t in s.tasks if t in tasks]) for s in sources]
        return [s for s in kept if s.tasks]

    sizes = {t: n for t, n in data.task_sizes.items() if t in tasks}
    return dataclasses.replace(data, train=keep(data.train), val=keep(data.val), test=keep(data.test), task_sizes=sizes)


def build_data(config: RunConfig) -> DataBundle:
    plugins.load(config.imports)
    return restrict_tasks(DATASETS.build(config.data), list(config.tasks))


def train_sample(sources: list[Source], samples: int, seed: int) -> list[Source]:
    """At most ``samples`` seeded random training examples per source (-1 = all), to score the train split."""
    if samples < 0:
        return sources
    out = []
    for s in sources:
        n = len(s)
        index = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(samples, n)].tolist()
        out.append(dataclasses.replace(s, dataset=torch.utils.data.Subset(s.dataset, index)))
    return out


def write_report_safely(out_dir: Path, writer: Callable[[Path], Path] | None = None) -> None:
    """The report comes after a finished training, which a plotting problem must not fail."""
    if writer is None:
        from .report import write_report as writer
    try:
        writer(out_dir)
    except Exception as e:  # any failure (matplotlib missing, odd logs): warn, keep the trained run
        warnings.warn(f"run report for {out_dir} not written: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def build_model(config: RunConfig, data: DataBundle) -> JointModel:
    """Backbone and heads from the config, completed by what the data knows (label names...)."""
    plugins.load(config.imports)
    backbone_spec = {**config.model.backbone, **data.backbone_updates}
    backbone = BACKBONES.build(backbone_spec)
    tasks = [
        build_task(name, {**spec, **data.task_updates.get(name, {})}, backbone) for name, spec in config.tasks.items()
    ]
    extra = {**data.extra, "data": config.data, "loading": dataclasses.asdict(config.loading)}
    return JointModel(backbone, tasks, backbone_spec, head_dropout=config.model.head_dropout, extra=extra)


def build_trainer(config: RunConfig, env: DistEnv | None = None, out_dir: str | Path | None = None) -> Trainer:
    env = env or init_distributed(config.train.device)
    seed_everything(config.train.seed)  # identical initial weights on every rank
    data = build_data(config)
    model = build_model(config, data)
    balancer = BALANCERS.build(config.balancing)
    sampler = SAMPLERS.build({"seed": config.train.seed, **config.sampler})
    return Trainer(
        model,
        data,
        balancer,
        sampler,
        config.train,
        config.loading,
        out_dir if out_dir is not None else config.output_dir,
        env,
    )


def check_run_dir(config: RunConfig, out_dir: Path) -> None:
    """Refuse to resume (or overwrite) a run directory made by an incompatible config."""
    saved_path = out_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = yaml.safe_load(saved_path.read_text()) or {}
    current = config.to_dict()
    differ = [k for k in _IDENTITY if saved.get(k) != current.get(k)]
    if differ:
        raise ConfigError(
            f"run directory {out_dir} was made by a config with different {', '.join(differ)}; "
            "use another output_dir (or delete that directory)"
        )


def train(config: RunConfig, resume: bool = False, env: DistEnv | None = None) -> dict[str, Any]:
    """Train, select the best checkpoint on validation, score it once on test, write ``eval.json``."""
    env = env or init_distributed(config.train.device)
    out_dir = Path(config.output_dir)
    check_run_dir(config, out_dir)
    if not resume and (out_dir / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{out_dir} already holds a run; pass --resume to continue it or choose another output_dir")
    trainer = build_trainer(config, env, out_dir)
    if env.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.yaml", dump_config(config))
    start = time.perf_counter()
    summary = trainer.fit(resume=resume)
    summary["train_time_s"] = time.perf_counter() - start
    if summary["status"] == "interrupted":
        return summary

    best = JointModel.from_pretrained(out_dir / "best", map_location=env.device)
    split = "test" if trainer.data.test else "val"
    sources = trainer.data.test or trainer.data.val
    results = evaluate(best, sources, trainer.loading, env, trainer.autocast)
    report: dict[str, Any] = {
        "tasks": results,
        "split": split,
        "val": summary["best_val"],
        "higher_is_better": higher_is_better(best),
        **{k: summary[k] for k in ("status", "step", "best_score", "nonfinite_steps", "train_time_s")},
    }
    if config.report.train_eval_samples:
        # the best model on (a sample of) its own training data: the train-val gap in the report
        report["train"] = evaluate(
            best,
            train_sample(trainer.data.train, config.report.train_eval_samples, config.train.seed),
            trainer.loading,
            env,
            trainer.autocast,
        )
    if config.baselines:
        report["delta_m"] = delta_m(results, config.baselines, higher_is_better(best))
    if env.is_main and config.report.affinity_batches and len(best.tasks) > 1:
        from .affinity import lookahead_affinity

        report["affinity"] = lookahead_affinity(
            best,
            trainer.data.train,
            trainer.loading,
            batches=config.report.affinity_batches,
            lr=config.report.affinity_lr,
            seed=config.train.seed,
        )
    if torch.cuda.is_available() and env.device.type == "cuda":
        report["peak_memory_mb"] = torch.cuda.max_memory_allocated(env.device) / 2**20
    if config.finetune is not None:
        f = config.finetune
        report["finetune"] = finetune(
            best,
            trainer.data,
            config.train,
            config.loading,
            mode=f.mode,
            steps=f.steps,
            lr_scale=f.lr_scale,
            tasks=f.tasks,
            out_dir=out_dir,
            env=env,
        )
    if env.is_main:
        atomic_write_json(out_dir / "eval.json", report)
        if config.report.enabled:
            write_report_safely(out_dir)
    return report
