"""The one way to build a run: config -> data, model, balancer, sampler, trainer.

``jointtrain train``, ``finetune``, ``tune``, ``compare`` and the domain scripts all start from an
:class:`Experiment`; variants (one task alone, config overrides) are derived from it, never
re-assembled by hand.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .. import plugins
from ..backbones import BACKBONES
from ..balancing import BALANCERS, Balancer
from ..config import ReportConfig, RunConfig, TrainConfig, apply_overrides, load_config
from ..data import DATASETS, DataBundle, Loading, Source
from ..distributed import DistEnv, init_distributed
from ..engine.rng import seed_everything
from ..engine.trainer import Trainer
from ..errors import ConfigError
from ..evaluation import Results
from ..model import JointModel
from ..sampling import SAMPLERS, TaskSampler
from ..tasks import build_task


def restrict_tasks(data: DataBundle, tasks: Sequence[str]) -> DataBundle:
    """The data restricted to ``tasks`` (a config may train a subset of what a dataset labels);
    sources left with no task are dropped."""

    def keep(sources: list[Source]) -> list[Source]:
        kept = [dataclasses.replace(s, tasks=[t for t in s.tasks if t in tasks]) for s in sources]
        return [s for s in kept if s.tasks]

    sizes = {t: n for t, n in data.task_sizes.items() if t in tasks}
    return dataclasses.replace(data, train=keep(data.train), val=keep(data.val), test=keep(data.test), task_sizes=sizes)


#: a later stage (fine-tuning) reports its before / after metrics in the parent run's report
NO_REPORT = ReportConfig(enabled=False, train_eval_samples=0, affinity_batches=0)


def stage_trainer(
    model: JointModel,
    data: DataBundle,
    balancer: Balancer,
    sampler: TaskSampler,
    train: TrainConfig,
    loading: Loading,
    out_dir: Path | None,
    env: DistEnv,
) -> Trainer:
    """The trainer of a later stage on a model already trained (fine-tuning one task): no report of its own."""
    return Trainer(model, data, balancer, sampler, train, loading, out_dir, env, report=NO_REPORT)


class Experiment:
    """A resolved run config and the components it builds."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        plugins.load(config.imports)

    @classmethod
    def from_file(cls, path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
        return cls(load_config(path, overrides))

    # -- variants ----------------------------------------------------------------------------
    def with_overrides(self, overrides: Sequence[str] | Mapping[str, Any]) -> Experiment:
        """A copy with ``key.sub=value`` overrides (or a ``{key: value}`` mapping) applied."""
        items = [f"{k}={json.dumps(v)}" for k, v in overrides.items()] if isinstance(overrides, Mapping) else overrides
        return Experiment(load_config(raw=apply_overrides(copy.deepcopy(self.config.to_dict()), list(items))))

    def single_task(self, task: str, output_dir: str | Path | None = None) -> Experiment:
        """``task`` alone with the same backbone, data, optimizer and budget (equal weighting)."""
        out = output_dir if output_dir is not None else f"{self.config.output_dir}/single/{task}"
        return self.subset([task], out, {"name": "ew", "heuristic": "uniform"})

    def subset(
        self, tasks: Sequence[str], output_dir: str | Path, balancing: Mapping[str, Any] | None = None
    ) -> Experiment:
        """Only ``tasks`` (a task group) with everything else of this run (backbone, data, optimizer,
        budget) and ``balancing`` (default: this run's)."""
        config = self.config
        unknown = [t for t in tasks if t not in config.tasks]
        if unknown or not tasks:
            raise ConfigError(f"tasks {unknown or list(tasks)} are not a subset of the config's {list(config.tasks)}")
        raw = copy.deepcopy(config.to_dict())
        raw["tasks"] = {t: config.tasks[t] for t in tasks}
        if balancing is not None:
            raw["balancing"] = dict(balancing)
        raw["baselines"] = {t: v for t, v in config.baselines.items() if t in tasks}
        monitor = raw["train"]["monitor"]
        if monitor != "score" and not any(monitor.startswith(f"{t}/") for t in tasks):
            raw["train"]["monitor"] = "score"  # the monitored metric belongs to a task left out
        raw["output_dir"] = str(output_dir)
        return Experiment(load_config(raw=raw))

    # -- components --------------------------------------------------------------------------
    @functools.cached_property
    def data(self) -> DataBundle:
        return restrict_tasks(DATASETS.build(self.config.data), list(self.config.tasks))

    def model(self, data: DataBundle | None = None) -> JointModel:
        """Backbone and heads from the config, completed by what the data knows (label names...)."""
        data = data or self.data
        config = self.config
        backbone_spec = {**config.model.backbone, **data.backbone_updates}
        backbone = BACKBONES.build(backbone_spec)
        for name, spec in config.tasks.items():  # the data completes a task's spec; it never contradicts it
            for key, supplied in data.task_updates.get(name, {}).items():
                if key in spec and spec[key] != supplied:
                    raise ConfigError(
                        f"task '{name}': tasks.{name}.{key} is {spec[key]!r} but the data's labels give "
                        f"{supplied!r}; remove tasks.{name}.{key} (the labels set it) or fix the labels"
                    )
        tasks = [
            build_task(name, {**spec, **data.task_updates.get(name, {})}, backbone)
            for name, spec in config.tasks.items()
        ]
        extra = {**data.extra, "data": config.data, "loading": dataclasses.asdict(config.loading)}
        return JointModel(
            backbone,
            tasks,
            backbone_spec,
            head_dropout=config.model.head_dropout,
            extra=extra,
            architecture=config.model.architecture,
        )

    def balancer(self) -> Balancer:
        return BALANCERS.build(self.config.balancing)

    def sampler(self) -> TaskSampler:
        return SAMPLERS.build({"seed": self.config.train.seed, **self.config.sampler})

    def trainer(
        self,
        env: DistEnv | None = None,
        data: DataBundle | None = None,
        out_dir: str | Path | None = "config",
        report: ReportConfig | None = None,
        reference: Results | None = None,
    ) -> Trainer:
        """The trainer of this run; ``out_dir=None`` trains without a run directory. ``report`` replaces
        the config's (a later stage writes the report instead). ``reference``: what selection scores
        measure change against (default: the config's ``baselines``, else the first validation); tune
        gives every trial the same one so that their scores compare."""
        config = self.config
        env = env or init_distributed(config.train.device)
        seed_everything(config.train.seed)  # identical initial weights on every rank
        data = data or self.data
        model = self.model(data)
        out = Path(config.output_dir).absolute() if out_dir == "config" else out_dir
        run_config = {**config.to_dict(), "output_dir": str(out)} if out is not None else None
        return Trainer(
            model,
            data,
            self.balancer(),
            self.sampler(),
            config.train,
            config.loading,
            out,
            env,
            report=report or config.report,
            reference=reference or config.baselines or None,
            run_config=run_config,
            strategy=config.distributed.strategy,
        )
