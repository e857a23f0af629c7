"""The training loop: sample sources, forward, balance, step, evaluate, checkpoint. Top to bottom.

With an ``out_dir`` the trainer owns a run directory (``core.engine.rundir``): it holds the lock,
refuses a folder that already holds a run unless resuming, writes ``metrics.jsonl``, checkpoints,
``best/`` and ``final/``, and at the end scores the best model and writes ``results.json`` and
``report.md`` — the same artifacts as ``jointtrain train``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ..balancing import Balancer, BalancerSetup, NonFiniteGradients, StepContext
from ..config import ReportConfig, TrainConfig
from ..data import DataBundle, Loading, labelled_sizes, move, open_stream
from ..distributed import (
    DistEnv,
    any_rank,
    average_gradients,
    barrier,
    connected_zero,
    gather_objects,
    resolve_device,
)
from ..errors import CheckpointError, ConfigError
from ..evaluation import Results, evaluate, metric_senses, monitored_value
from ..io import load_state
from ..model import JointModel
from ..sampling import TaskSampler
from .checkpoints import CheckpointManager
from .compatibility import check_combination
from .compiled import compile_model
from .conclude import conclude
from .ddp import unused_zero
from .interrupt import graceful_interrupt
from .losses import StepCounts
from .metrics_log import RunLog, host_record, setup_record
from .nonfinite import NonFiniteWatch
from .optim import build_optimizer, build_scheduler
from .precision import Precision
from .progress import progress_bar
from .rng import restore_rank_rng, rng_state, seed_everything
from .rundir import RunDir, RunStatus
from .skip import poison, step_unless
from .strategy import STRATEGIES

FORMAT = "jointtrain.trainer/2"


class Trainer:
    """Joint training of ``model`` on ``data``; ``fit()`` runs it, ``evaluate()`` scores a split.

    ``reference``: per-task metrics that model selection measures relative change against (the
    config's ``baselines``); by default the first validation result. ``run_config``: the resolved
    config recorded in ``config.yaml`` and compared on resume (default: built from the parts).
    """

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
        self.config, self.report = config, report or ReportConfig()
        self.env = env or DistEnv(device=resolve_device(config.device))
        self.loading = loading.resolved(self.env.device)  # workers and pinned memory on CUDA by default
        self.model = model.to(self.env.device)
        if config.channels_last and self.env.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        if self.env.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # a source's batches share one shape: autotune its convolutions once
        self.compiled = compile_model(self.model, config.compile, self.env.device)
        self.data, self.balancer, self.sampler = data, balancer, sampler
        check_combination(model, data, balancer, sampler)
        self.run = RunDir(out_dir) if out_dir is not None else None
        self.run_config = run_config or {
            "train": dataclasses.asdict(config),
            "loading": dataclasses.asdict(loading),
            "model": {k: v for k, v in model.config().items() if k != "extra"},
            "balancing": repr(balancer),
            "sampler": repr(sampler),
        }

        self.streams = {
            s.name: open_stream(s, self.loading, config.seed, self.env.rank, self.env.world_size) for s in data.train
        }
        self.source_by_name = {s.name: s for s in data.train}
        sampler.setup({name: len(stream) for name, stream in self.streams.items()})
        balancer.setup(
            BalancerSetup(
                tasks=list(model.tasks),
                task_weights={t: task.weight for t, task in model.tasks.items()},
                dataset_sizes=data.task_sizes or labelled_sizes(data, {t: k.label_key for t, k in model.tasks.items()}),
                steps_per_epoch=sampler.steps_per_epoch(),
                model=self.model,
            )
        )
        self.balancer.to(self.env.device)
        self.strategy = STRATEGIES.build(strategy)
        self.forward_step = self.strategy.wrap(self.model, self.env, balancer)
        self.ddp = self.strategy.reduces_in_backward(self.forward_step)  # DDP or FSDP: every rank runs every backward
        self.optimizer = build_optimizer(self.model, self.balancer, config)
        self.scheduler = build_scheduler(self.optimizer, config)
        self.precision = Precision(config.amp, self.env.device)
        self.senses = metric_senses(model)
        self.reference = reference
        self.checkpoints = CheckpointManager(
            self.run.checkpoints if self.run else Path("."),
            self.run.model("best") if self.run else Path("."),
            config.keep_best,
            write=self.run is not None and self.env.is_main,
        )

        self.step = 0
        self.best_val: Results = {}
        self.evals_without_improvement = 0
        self.watch = NonFiniteWatch(config.max_nonfinite_steps)
        self.skip_on_device = self.env.device.type != "cpu"  # core.engine.skip: on the CPU a read is free
        self.stop_requested = False  # set by Ctrl-C / SIGTERM: checkpoint at the step boundary and stop

    def request_stop(self) -> bool:
        """Ask the loop to stop after the current step; True if that had been asked already."""
        already, self.stop_requested = self.stop_requested, True
        return already

    def _stop_agreed(self) -> bool:
        """Whether every rank stops now. A signal reaches ranks at different steps, so under DDP the
        flag is all-reduced at log steps only (one tiny collective every ``log_every`` steps) and
        all ranks stop at the same step boundary."""
        if not self.env.enabled:
            return self.stop_requested
        if self.step % self.config.log_every:
            return False
        return any_rank(self.stop_requested, self.env)

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
        if unused is not None:
            total = total + unused
        self.precision.scaler.scale(total).backward()

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
        """One optimizer step; its definition, as slow reference code: ``tests/core/engine/reference_step.py``.

        Each task's loss is its masked mean over every labelled sample of the step's ``grad_accum``
        micro-batches on every rank (:mod:`.losses`: counted on the CPU batches, so a task with no
        label anywhere is known before the forward and its layers stay untouched). A balancer that
        ``accumulates_linearly`` backpropagates each micro-batch as it comes; any other is called
        once with the step's losses, every micro-batch's graph held until then. A step with a
        non-finite loss is skipped exactly (:mod:`.skip`). The record's values may be device
        tensors: ``fit`` reads them back at log steps only. A ``host_values`` balancer costs one
        host read of the step's losses; otherwise nothing is read back on an accelerator (the skip is
        decided by the fused optimizer; on the CPU one free read decides).
        """
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
        grad_norm = self._optimizer_step(finite)
        self.balancer.after_step(lambda: self._recompute([cpu for cpu, _ in fetched], counts))
        record: dict[str, Any] = {f"loss/{t}": v for t, v in loss_values.items()}
        record.update({f"weight/{t}": w for t, w in weights.items()})
        record["lr"] = self.scheduler.get_last_lr()[0]
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    def _skip(self, bad: dict[str, float], outputs: list[dict[str, Any]], what: str = "loss") -> dict[str, Any]:
        """Skip the step exactly (host path): no parameter or optimizer state moves; the schedule
        advances and an fp16 scaler lowers its scale, as on the device path."""
        if self.ddp:  # DDP's reducer must see every forward's backward
            self._backward(sum(connected_zero(o) for o in outputs))  # type: ignore[arg-type]
        self.optimizer.zero_grad(set_to_none=True)
        self._optimizer_step(torch.zeros((), dtype=torch.bool, device=self.env.device))
        return self.watch.skipped(self.step, bad, what)

    def _optimizer_step(self, finite: torch.Tensor) -> torch.Tensor | None:
        """Average, unscale, L1, clip, then step unless ``finite`` is False (a device bool)."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        synced = {id(p) for p in self.balancer.synchronised_parameters()}  # already global: not averaged again
        if self.ddp:  # DDP / FSDP averaged the model's gradients during backward
            synced |= {id(p) for p in self.model.parameters()}
        average_gradients([p for p in params if id(p) not in synced], self.env)
        scaler = self.precision.scaler
        if scaler.is_enabled():
            poison(params, finite)  # the scaler skips and backs off, as for an overflow of its own
        scaler.unscale_(self.optimizer)
        if self.config.l1:
            for p in self.model.parameters():
                if p.grad is not None and p.ndim > 1:
                    p.grad.add_(torch.sign(p.detach()), alpha=self.config.l1)
        grad_norm = None
        if self.config.clip_grad_norm:
            grad_norm = self.strategy.replicated(torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm))
        if scaler.is_enabled():
            scaler.step(self.optimizer)
        else:
            step_unless(self.optimizer, finite, self.skip_on_device)
        scaler.update()
        self.scheduler.step()
        return grad_norm

    @torch.no_grad()
    def _recompute(self, fetched: list[dict[str, Any]], counts: StepCounts) -> dict[str, float]:
        """The step's losses after the optimizer step, on the same micro-batches."""
        sums: dict[str, torch.Tensor] = {}
        for cpu in fetched:
            for t, v in self._forward(move(cpu, self.env.device))[0].items():
                sums[t] = sums[t] + v if t in sums else v
        return dict(zip(counts.labelled, counts.values(sums, self.env).tolist(), strict=True))

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, split: str = "val", model: JointModel | None = None) -> Results:
        sources = {"val": self.data.val, "test": self.data.test, "train": self.data.train}[split]
        with self.strategy.gathered(self.forward_step) if model is None else contextlib.nullcontext():
            return evaluate(model or self.model, sources, self.loading, self.env, self.precision.autocast)

    def score(self, results: Results) -> float:
        """The monitored value (higher is better); the first validation result is the reference
        unless ``reference`` was given."""
        self.reference = self.reference or results
        return monitored_value(results, self.config.monitor, self.reference, self.senses)

    # -- state -------------------------------------------------------------------------------
    def _model_states(self) -> dict[str, Any]:
        """Model and optimizer state; a collective under FSDP (gathered to rank 0)."""
        optimizer = self.strategy.optimizer_state(self.model, self.balancer, self.optimizer)
        return {"model": self.strategy.model_state(self.model), "optimizer": optimizer}

    def state_dict(
        self, rank_rngs: list[dict[str, Any]] | None = None, models: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The resumable state; ``rank_rngs``: every rank's RNG state (default: this process's only);
        ``models``: :meth:`_model_states`, taken on every rank beforehand (default: taken here)."""
        return {
            "format": FORMAT,
            "step": self.step,
            "tasks": list(self.model.tasks),
            "run_config": self.run_config,
            **(models or self._model_states()),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.scaler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "streams": {name: s.state_dict() for name, s in self.streams.items()},
            "rng": rank_rngs or [rng_state(self.env.device)],
            "checkpoints": self.checkpoints.state_dict(),
            "reference": self.reference,
            "best_val": self.best_val,
            "evals_without_improvement": self.evals_without_improvement,
            "nonfinite_total": self.watch.count(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != FORMAT:
            raise CheckpointError(f"not a {FORMAT} checkpoint (format {state.get('format')!r})")
        if state["tasks"] != list(self.model.tasks) or set(state["streams"]) != set(self.streams):
            raise CheckpointError(
                f"checkpoint tasks {state['tasks']} / sources {sorted(state['streams'])} differ from "
                f"{list(self.model.tasks)} / {sorted(self.streams)}"
            )
        try:
            self.balancer.load_state_dict(state["balancer"])  # first: the optimizer holds its parameters
            self.strategy.load(self.model, self.balancer, self.optimizer, state)
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not match the model built from the config: {e}") from e
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.scaler.load_state_dict(state["scaler"])
        for name, s in state["streams"].items():
            self.streams[name].load_state_dict(s)
        rngs = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]  # older checkpoints: rank 0 only
        restore_rank_rng(rngs, self.env.rank, self.env.device, self.config.seed, int(state["step"]))
        self.checkpoints.load_state_dict(state["checkpoints"])
        self.step, self.reference, self.best_val = int(state["step"]), state["reference"], state["best_val"]
        self.evals_without_improvement = int(state["evals_without_improvement"])
        self.watch.total = int(state["nonfinite_total"])

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` or early stopping; returns a summary (with the test results when
        there is a run directory)."""
        c, main = self.config, self.env.is_main
        writing = self.run.writing() if self.run is not None and main else contextlib.nullcontext()
        with writing:
            log = self._start(resume)
            status = RunStatus.COMPLETED
            start = time.perf_counter()
            self.model.train()
            with graceful_interrupt(self.request_stop), progress_bar(self, c) as bar:
                while self.step < c.max_steps:
                    record = self.train_step()
                    self.step += 1
                    bar.update(1)
                    if self.step % c.log_every == 0 or self.step == c.max_steps:
                        self.watch.check()
                        record = host_record(record, self.balancer, self.model.architecture)
                        bar.set_postfix({k[5:]: f"{v:.3f}" for k, v in record.items() if k[:5] == "loss/"}, False)
                        log({"split": "train", "step": self.step, "time": time.perf_counter() - start, **record})
                    if (c.eval_every and self.step % c.eval_every == 0) or self.step == c.max_steps:
                        self._validate(log)
                        if self.step < c.max_steps and self.evals_without_improvement >= c.early_stopping_patience > 0:
                            status = RunStatus.EARLY_STOPPED
                            break
                    if self._stop_agreed():
                        self._save(None)
                        status = RunStatus.INTERRUPTED
                        break
            summary = {
                "status": status.value,
                "step": self.step,
                "best_val": self.best_val,
                "best_score": self.checkpoints.best_score,
                "nonfinite_steps": self.watch.count(),
                "train_time_s": time.perf_counter() - start,
            }
            if status.finished:
                self._save_model("final")
                if not self.data.val:  # no validation split: the final model is the best we know
                    self._save_model("best")
                if self.run is not None:
                    summary = conclude(self, summary)
            log.close()
        return summary

    def _start(self, resume: bool) -> RunLog:
        """Check the run directory, load or seed the state, and open the log."""
        run, main = self.run, self.env.is_main
        if resume:
            if run is None:
                raise ConfigError("resume needs an out_dir holding checkpoints/last.pt")
            state = load_state(run.last_checkpoint)
            changes = run.check_resume(state.get("run_config", {}), self.run_config)
            self.load_state_dict(state)
        elif run is not None and main:
            run.check_new()
        if not resume:
            seed_everything(self.config.seed + self.env.rank)
        barrier(self.env)
        log = RunLog(self.run if main else None)
        if run is not None and main:
            run.write_config(yaml.safe_dump(self.run_config, sort_keys=False))
        if resume:
            dropped = log.truncate_after(self.step)
            log({"split": "resume", "step": self.step, "changes": changes, "dropped_records": dropped})
        else:
            log(setup_record(self))
        return log

    def _validate(self, log: RunLog) -> None:
        """Score the validation split, keep the best checkpoints, count evaluations without improvement."""
        results = self.evaluate("val") if self.data.val else {}
        score = self.score(results) if results else None
        if results:
            log({"split": "val", "step": self.step, "score": score, "tasks": results})
        if self._save(score):
            self.best_val, self.evals_without_improvement = results, 0
        elif score is not None:
            self.evals_without_improvement += 1

    def _save(self, score: float | None) -> bool:
        """Checkpoint (rank 0 writes); True when ``score`` is the best so far."""
        rngs = gather_objects(rng_state(self.env.device), self.env)  # every rank joins; rank 0 writes them
        models, whole = self._model_states(), self.strategy.whole(self.model, self.env)  # collectives too
        improved = self.checkpoints.save(self.step, lambda: self.state_dict(rngs, models), whole, score)
        barrier(self.env)
        return improved

    def _save_model(self, name: str) -> None:
        whole = self.strategy.whole(self.model, self.env)
        if self.run is not None and self.env.is_main:
            whole.save_pretrained(self.run.model(name))
        barrier(self.env)
