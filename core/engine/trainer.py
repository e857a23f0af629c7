"""The training loop: sample sources, forward, balance, step, evaluate, checkpoint. Top to bottom.

``fit`` runs the loop inside the run's lifecycle (:mod:`.lifecycle`): with an ``out_dir`` it owns
a run directory and writes what ``jointtrain train`` writes (``config.yaml``, ``metrics.jsonl``,
checkpoints, ``best/``, ``final/``, ``results.json``, the report); without one it writes nothing.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..balancing import Balancer, BalancerSetup, NonFiniteGradients, StepContext
from ..config import ReportConfig, TrainConfig
from ..data import DataBundle, Loading, labelled_sizes, move, open_stream
from ..distributed import DistEnv, connected_zero, gather_objects, resolve_device
from ..evaluation import Results, evaluate, metric_senses
from ..model import JointModel
from ..rundir.directory import RunStatus
from ..sampling import TaskSampler
from .compatibility import check_combination
from .compiled import compile_model
from .conclude import Scoring
from .ddp import unused_zero
from .interrupt import graceful_interrupt
from .lifecycle import default_run_config, lifecycle
from .losses import StepCounts
from .nonfinite import NonFiniteWatch
from .optim import build_optimizer, build_scheduler
from .precision import Precision
from .progress import progress_bar
from .records import host_record, setup_record, step_record
from .rng import rng_state, seed_everything
from .selection import Selection
from .state import TrainState
from .strategy import STRATEGIES
from .update import Update


class Trainer:
    """Joint training of ``model`` on ``data``; ``fit()`` runs it, ``evaluate()`` scores a split.
    ``reference``: the config's ``baselines`` (:class:`.selection.Selection`); ``run_config``: the
    resolved config in ``config.yaml``, compared on resume (default: built from the parts)."""

    def __init__(
        self,
        model: JointModel,
        data: DataBundle,
        balancer: Balancer,
        sampler: TaskSampler,
        config: TrainConfig,
        loading: Loading = Loading(),
        out_dir: str | Path | None = None,
        env: DistEnv | None = None,
        report: ReportConfig | None = None,
        reference: Results | None = None,
        run_config: dict[str, Any] | None = None,
        strategy: str = "ddp",
    ) -> None:
        self.config, self.env = config, env or DistEnv(device=resolve_device(config.device))
        self.loading = loading.resolved(self.env.device)  # workers and pinned memory on CUDA by default
        self.model = model.to(self.env.device)
        if self.env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a source's batches share one shape: autotune its convolutions once
            self.model = self.model.to(memory_format=torch.channels_last) if config.channels_last else self.model
        self.compiled = compile_model(self.model, config.compile, self.env.device)
        self.data, self.balancer, self.sampler = data, balancer, sampler
        check_combination(model, data, balancer, sampler)
        self.run_config = run_config or default_run_config(config, loading, model, balancer, sampler)
        self.streams = {
            s.name: open_stream(s, self.loading, config.seed, self.env.rank, self.env.world_size) for s in data.train
        }
        self.source_by_name = {s.name: s for s in data.train}
        sampler.setup({name: len(stream) for name, stream in self.streams.items()})
        weights = {t: task.weight for t, task in model.tasks.items()}
        sizes = data.task_sizes or labelled_sizes(data, {t: task.label_key for t, task in model.tasks.items()})
        balancer.setup(BalancerSetup(list(model.tasks), weights, sizes, sampler.steps_per_epoch(), self.model))
        self.balancer.to(self.env.device)
        self.strategy = STRATEGIES.build(strategy)
        self.forward_step = self.strategy.wrap(self.model, self.env, balancer)
        self.ddp = self.strategy.reduces_in_backward(self.forward_step)  # DDP or FSDP: every rank runs every backward
        self.optimizer = build_optimizer(self.model, self.balancer, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.precision = Precision(config.amp, self.env.device)
        self.update = Update(
            self.optimizer, self.scheduler, self.precision.scaler, self.model, balancer, config, self.env,
            self.strategy.replicated, reduced=self.ddp,
        )  # fmt: skip
        self.selection = Selection(config.monitor, metric_senses(model), config.early_stopping_patience, reference)
        report = report or ReportConfig()
        scoring = Scoring(data, self.loading, self.env, self.precision.autocast, config.seed, config.monitor, report)
        self.life = lifecycle(out_dir, scoring, config.keep_best)
        self.run, self.checkpoints = self.life.run, self.life.checkpoints
        self.step = 0
        self.watch = NonFiniteWatch(config.max_nonfinite_steps)
        self.state = TrainState(
            self.model, balancer, self.optimizer, self.scheduler, self.precision.scaler, self.streams, self.strategy,
            self.checkpoints, self.selection, self.watch, self.env, config.seed, self.run_config,
        )  # fmt: skip

    def request_stop(self) -> bool:
        """Ask the loop to stop after the current step (Ctrl-C / SIGTERM); True if that had been asked already."""
        return self.life.request_stop()

    # -- one step --------------------------------------------------------------------------
    def _batches(self, chosen: list[str]) -> tuple[dict[str, Any], dict[str, int]]:
        """The next CPU batch of each chosen source, its labels checked and counted (no device sync)."""
        batches: dict[str, Any] = {}
        counts: dict[str, int] = {}
        for name in chosen:
            batch = batches[name] = next(self.streams[name])
            for t in self.source_by_name[name].tasks:
                task, target = self.model.tasks[t], batch[self.model.tasks[t].label_key]
                task.validate_target(target)
                counts[t] = counts.get(t, 0) + task.count_labelled(target)
        return batches, counts

    def _forward(self, batches: dict[str, Any]) -> tuple[dict[str, torch.Tensor], Any, dict[str, dict[str, Any]]]:
        """Backbone once per source, the heads of its tasks; each task's masked loss sum, on the device."""
        sums: dict[str, torch.Tensor] = {}
        inputs = {name: batch[self.source_by_name[name].input_key] for name, batch in batches.items()}
        with self.precision.autocast():
            features, outputs = self.forward_step(inputs, {name: self.source_by_name[name].tasks for name in batches})
            for name, batch in batches.items():
                for t in self.source_by_name[name].tasks:
                    task = self.model.tasks[t]
                    total = task.masked_loss(outputs[name][t], batch[task.label_key])[0].float()
                    sums[t] = sums[t] + total if t in sums else total
        return sums, features, outputs

    def _backward(self, total: torch.Tensor, unused: torch.Tensor | None = None) -> None:
        self.precision.scaler.scale(total if unused is None else total + unused).backward()

    def _balance(
        self, losses: dict[str, torch.Tensor], values: Any, features: dict[str, Any], outputs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """The balancer's backward of ``losses`` (a micro-batch's shares, or the whole step's)."""
        zeros = [u for o in outputs if (u := unused_zero(o, losses)) is not None] if self.ddp else []
        ctx = StepContext(
            step=self.step,
            backward=functools.partial(self._backward, unused=sum(zeros) if zeros else None),  # type: ignore[arg-type]
            loss_values=values,
            model=self.model,
            features=features,
            source_tasks={name: self.source_by_name[name].tasks for name in features},
            env=self.env,
            scaler=self.precision.scaler,
        )
        return self.balancer.backward(losses, ctx)

    def train_step(self) -> dict[str, Any]:
        """One optimizer step (its definition, as slow reference code: ``tests/core/engine/reference_step.py``;
        its data flow: ``docs/architecture.md``). Each task's loss is its masked mean over every labelled
        sample of the step's micro-batches on every rank; the record's values may be device tensors."""
        chosen = self.sampler.choose(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        fetched = [self._batches(chosen) for _ in range(self.config.grad_accum)]
        step_tasks = list(dict.fromkeys(t for name in chosen for t in self.source_by_name[name].tasks))
        counts = StepCounts.gather(step_tasks, [c for _, c in fetched], self.env)
        if not counts.labelled:  # no label of any task on any rank: every rank skips alike
            self.scheduler.step()
            return {"lr": self.scheduler.get_last_lr()[0]}
        streaming = self.balancer.accumulates_linearly
        weights: dict[str, Any] = {}
        sums: dict[str, torch.Tensor] = {}  # the step's masked loss sums, graphs held unless streaming
        features: dict[str, list[Any]] = {}
        outputs: list[dict[str, Any]] = []
        for i, (cpu, _) in enumerate(fetched):
            with self.strategy.accumulating(self.forward_step, last=i == len(fetched) - 1):
                part, feats, outs = self._forward(move(cpu, self.env.device))
                if streaming:  # backpropagated now: keep only the detached sums, no activation
                    weights = self._balance(counts.losses(part), {}, {n: [f] for n, f in feats.items()}, [outs])
                    part = {t: v.detach() for t, v in part.items()}
                else:
                    for name, f in feats.items():
                        features.setdefault(name, []).append(f)
                    outputs.append(outs)
            for t, v in part.items():
                sums[t] = sums[t] + v if t in sums else v
        labelled, table = counts.labelled, counts.values(sums, self.env)
        if self.balancer.host_values:  # host sync: the balancer reads floats, and the skip is decided here
            loss_values: dict[str, Any] = dict(zip(labelled, table.tolist(), strict=True))
            bad = {t: v for t, v in loss_values.items() if not math.isfinite(v)}
            if bad:
                return self._skip(bad, outputs)
            finite = torch.ones((), dtype=torch.bool, device=self.env.device)
        else:
            loss_values = dict(zip(labelled, table.unbind(), strict=True))
            finite = torch.isfinite(table).all()
            self.watch.observe(self.step, labelled, table)
        if not streaming:
            try:
                weights = self._balance(counts.losses(sums), loss_values, features, outputs)
            except NonFiniteGradients as e:  # gradient-space methods check the task gradients
                return self._skip(e.values, outputs, what="gradient squared norm")
        if self.balancer.host_values:
            self.watch.stepped()
        for t in set(self.model.tasks) - set(labelled):  # no label in the step: untouched
            for p in self.model.task_parameters(t):
                p.grad = None
        grad_norm = self.update(finite)
        self.balancer.after_step(lambda: self._recompute([cpu for cpu, _ in fetched], counts))
        return step_record(loss_values, weights, self.scheduler.get_last_lr()[0], grad_norm)

    def _skip(self, bad: dict[str, float], outputs: list[dict[str, Any]], what: str = "loss") -> dict[str, Any]:
        """Skip the step exactly (host path): no parameter or optimizer state moves; the schedule
        advances and an fp16 scaler lowers its scale, as on the device path."""
        if self.ddp:  # DDP's reducer must see every forward's backward
            self._backward(sum(connected_zero(o) for o in outputs))  # type: ignore[arg-type]
        self.optimizer.zero_grad(set_to_none=True)
        self.update(torch.zeros((), dtype=torch.bool, device=self.env.device))
        return self.watch.skipped(self.step, bad, what)

    @torch.no_grad()
    def _recompute(self, fetched: list[dict[str, Any]], counts: StepCounts) -> dict[str, float]:
        """The step's losses after the optimizer step, on the same micro-batches."""
        sums: dict[str, torch.Tensor] = {}
        for cpu in fetched:
            for t, v in self._forward(move(cpu, self.env.device))[0].items():
                sums[t] = sums[t] + v if t in sums else v
        return dict(zip(counts.labelled, counts.values(sums, self.env).tolist(), strict=True))

    def evaluate(self, split: str = "val", model: JointModel | None = None) -> Results:
        sources = {"val": self.data.val, "test": self.data.test, "train": self.data.train}[split]
        with self.strategy.gathered(self.forward_step) if model is None else contextlib.nullcontext():
            return evaluate(model or self.model, sources, self.loading, self.env, self.precision.autocast)

    def state_dict(self, rank_rngs: list[Any] | None = None, models: dict[str, Any] | None = None) -> dict[str, Any]:
        """The resumable state (:class:`.state.TrainState`)."""
        return self.state.state_dict(self.step, rank_rngs, models)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = self.state.load_state_dict(state)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` or early stopping; a summary (with a run directory, the test results too)."""
        c, life = self.config, self.life
        with life.running():
            state = life.start(resume, self.run_config)
            if state is not None:
                self.load_state_dict(state)
            else:
                seed_everything(c.seed + self.env.rank)
            setup = setup_record(self.model, self.sampler, self.balancer, self.env, self.strategy, self.precision, c)
            life.begin(self.step, setup, self.run_config)
            status, start = RunStatus.COMPLETED, time.perf_counter()
            self.model.train()
            desc, show = f"train {'+'.join(self.model.tasks)}", c.progress and self.env.is_main
            with graceful_interrupt(life.request_stop), progress_bar(c.max_steps, self.step, show, desc) as bar:
                while self.step < c.max_steps:
                    record = self.train_step()
                    self.step += 1
                    bar.update(1)
                    if self.step % c.log_every == 0 or self.step == c.max_steps:
                        self.watch.check()
                        record = host_record(record, self.balancer, self.model.architecture)
                        bar.set_postfix({k[5:]: f"{v:.3f}" for k, v in record.items() if k[:5] == "loss/"}, False)
                        life.log({"split": "train", "step": self.step, "time": time.perf_counter() - start, **record})
                    if (c.eval_every and self.step % c.eval_every == 0) or self.step == c.max_steps:
                        self._validate()
                        if self.step < c.max_steps and self.selection.exhausted():
                            status = RunStatus.EARLY_STOPPED
                            break
                    if life.stop_agreed(self.step, c.log_every):  # checkpoint at the step boundary and stop
                        self._save(None)
                        status = RunStatus.INTERRUPTED
                        break
            summary = {
                "status": status.value,
                "step": self.step,
                "best_val": self.selection.best_val,
                "best_score": self.checkpoints.best_score,
                "nonfinite_steps": self.watch.count(),
                "train_time_s": time.perf_counter() - start,
            }
            if status.finished:
                whole = functools.partial(self.strategy.whole, self.model, self.env)  # a collective under FSDP
                summary = life.finish(summary, whole, self.selection.reference)
        return summary

    def _validate(self) -> None:
        """Score the validation split, keep the best checkpoints, count evaluations without improvement."""
        results = self.evaluate("val") if self.data.val else {}
        score = self.selection.score(results) if results else None
        self.life.validated(self.step, score, results)
        self.selection.judged(results, score, improved=self._save(score))

    def _save(self, score: float | None) -> bool:
        """Checkpoint (rank 0 writes); True when ``score`` is the best so far."""
        rngs = gather_objects(rng_state(self.env.device), self.env)  # every rank joins; rank 0 writes them
        models, whole = self.state.model_states(), self.strategy.whole(self.model, self.env)  # collectives too
        return self.life.checkpoint(self.step, score, lambda: self.state_dict(rngs, models), whole)
