"""The training loop: sample sources, forward, balance, step, evaluate, checkpoint. Top to bottom.

Artifacts in ``out_dir``: ``metrics.jsonl`` (one JSON record per log/eval), ``checkpoints/last.pt``
(everything needed to resume exactly), ``best/`` (the model with the best validation score, a
``JointModel.save_pretrained`` directory), ``tb/`` (TensorBoard, when installed).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import random
import signal
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .balancing import Balancer, BalancerSetup, NonFiniteGradients, StepContext
from .checkpoint import load_state, save_state
from .data import DataBundle, Loading, SourceStream, count_labelled
from .distributed import DistEnv, all_reduce_sum, average_gradients, barrier, resolve_device
from .errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from .evaluation import Results, aggregate_score, evaluate, higher_is_better, move
from .model import JointModel
from .optim import OPTIMIZERS, SCHEDULES
from .sampling import TaskSampler


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps (each may accumulate several micro-batches)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    head_lr_scale: float = 1.0  # heads train at lr * head_lr_scale (fresh heads on a pretrained backbone)
    weight_decay: float = 0.01  # decoupled (AdamW) / L2 (SGD); never applied to balancer weights
    momentum: float = 0.9  # SGD only
    schedule: str = "cosine"  # constant | cosine | linear, after warmup
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with a GradScaler) | off
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 0.0  # 0 = no clipping
    l1: float = 0.0  # L1 penalty on all trainable weights (sparsity / overfitting control)
    eval_every: int = 100  # steps between validation runs (0 = only at the end)
    monitor: str = "score"  # "score" (mean primary metric) or "task/metric" for early stopping
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    channels_last: bool = False  # memory format for conv backbones on CUDA
    max_nonfinite_steps: int = 0  # consecutive NaN/Inf-loss steps skipped before stopping
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        positive = {"max_steps": self.max_steps, "grad_accum": self.grad_accum, "log_every": self.log_every}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {value}")
        non_negative = {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "clip_grad_norm": self.clip_grad_norm,
            "l1": self.l1,
            "eval_every": self.eval_every,
            "early_stopping_patience": self.early_stopping_patience,
            "max_nonfinite_steps": self.max_nonfinite_steps,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {value}")


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Joint training of ``model`` on ``data``; ``fit()`` runs it, ``evaluate()`` scores a split."""

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
    ) -> None:
        self.config, self.loading = config, loading
        self.env = env or DistEnv(device=resolve_device(config.device))
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model = model.to(self.env.device)
        if config.channels_last and self.env.device.type == "cuda":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.data, self.balancer, self.sampler = data, balancer, sampler
        self._check_data()

        self.streams = {
            s.name: SourceStream(s, loading, config.seed, self.env.rank, self.env.world_size) for s in data.train
        }
        self.source_by_name = {s.name: s for s in data.train}
        sampler.setup({name: len(stream) for name, stream in self.streams.items()})
        sizes = data.task_sizes or self._count_labelled()
        balancer.setup(
            BalancerSetup(
                tasks=list(model.tasks),
                task_weights={t: task.weight for t, task in model.tasks.items()},
                dataset_sizes=sizes,
                steps_per_epoch=sampler.steps_per_epoch(),
            )
        )
        self.balancer.to(self.env.device)

        self.optimizer = self._build_optimizer()
        factor = SCHEDULES.build(
            config.schedule, total=config.max_steps, warmup=config.warmup_steps, min_ratio=config.min_lr_ratio
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.env.device.type, enabled=self.amp_dtype is torch.float16)

        self.directions = higher_is_better(model)
        self.primary = {t: task.primary_metric for t, task in model.tasks.items()}
        self.step = 0
        self.best_score = -math.inf
        self.evals_without_improvement = 0
        self.nonfinite_in_a_row = 0
        self.nonfinite_total = 0
        self._stop_requested = False
        self._writer: Any = None

    # -- setup helpers -----------------------------------------------------------------------
    def _check_data(self) -> None:
        if not self.data.train:
            raise DataError("no training sources")
        unknown = {t for s in [*self.data.train, *self.data.val] for t in s.tasks} - set(self.model.tasks)
        if unknown:
            raise DataError(f"data sources label tasks {sorted(unknown)} that the model does not have")
        untrained = set(self.model.tasks) - {t for s in self.data.train for t in s.tasks}
        if untrained:
            raise DataError(f"tasks {sorted(untrained)} have no training source")

    def _count_labelled(self) -> dict[str, int]:
        label_keys = {t: task.label_key for t, task in self.model.tasks.items()}
        sizes = dict.fromkeys(self.model.tasks, 0)
        for source in self.data.train:
            for t, n in count_labelled(source, label_keys).items():
                sizes[t] += n
        empty = [t for t, n in sizes.items() if n == 0]
        if empty:
            raise DataError(f"tasks {empty} have no labelled sample in the training split")
        return sizes

    def _build_optimizer(self) -> torch.optim.Optimizer:
        # (is a head, is decayed) -> params; biases and norm weights (1-D tensors) are not decayed
        split: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {
            k: [] for k in itertools.product((False, True), repeat=2)
        }
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                split[(name.startswith("heads."), not (p.ndim <= 1 or name.endswith(".bias")))].append(p)
        c = self.config
        groups = [
            {
                "params": params,
                "lr": c.lr * (c.head_lr_scale if head else 1.0),
                **({} if decay else {"weight_decay": 0.0}),
            }
            for (head, decay), params in split.items()
            if params
        ]
        balancer_params = [p for p in self.balancer.parameters() if p.requires_grad]
        if balancer_params:
            groups.append({"params": balancer_params, "weight_decay": 0.0})
        extra = {"momentum": c.momentum} if c.optimizer == "sgd" else {}
        return OPTIMIZERS.build({"name": c.optimizer, **extra}, params=groups, lr=c.lr, weight_decay=c.weight_decay)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.amp
        if amp == "auto":
            return torch.bfloat16 if self.env.device.type == "cuda" else None
        if amp == "off":
            return None
        if amp not in AMP_DTYPES:
            raise ConfigError(f"unknown amp mode '{amp}'; valid: auto, bf16, fp16, off")
        return AMP_DTYPES[amp]

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.env.device.type, dtype=self.amp_dtype)

    # -- one step --------------------------------------------------------------------------
    def _forward(self, batches: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Backbone once per source, the heads of that source's tasks, masked task losses."""
        losses: dict[str, list[torch.Tensor]] = {}
        features: dict[str, Any] = {}
        with self.autocast():
            for name, batch in batches.items():
                source = self.source_by_name[name]
                features[name] = self.model.encode(batch[source.input_key])
                outputs = self.model.decode(features[name], source.tasks)
                for t in source.tasks:
                    task = self.model.tasks[t]
                    loss = task.loss(outputs[t], batch[task.label_key])
                    if loss is not None:
                        losses.setdefault(t, []).append(loss.float())
        # a task labelled by several sources this step: mean of its per-source losses
        return {t: torch.stack(v).mean() for t, v in losses.items()}, features

    def _global_values(self, losses: dict[str, torch.Tensor]) -> dict[str, float]:
        """Detached task losses averaged over the ranks where the task had labels."""
        tasks = list(self.model.tasks)
        buf = torch.zeros(len(tasks), 2, device=self.env.device, dtype=torch.float64)
        for t, loss in losses.items():
            buf[tasks.index(t)] = torch.stack(
                [loss.detach().double(), torch.ones((), device=self.env.device, dtype=torch.float64)]
            )
        all_reduce_sum(buf, self.env)
        return {t: float(buf[i, 0] / buf[i, 1]) for i, t in enumerate(tasks) if buf[i, 1] > 0}

    def _backward(self, total: torch.Tensor) -> None:
        self.scaler.scale(total / self.config.grad_accum).backward()

    def train_step(self) -> dict[str, Any]:
        """One optimizer step over ``grad_accum`` micro-batches of the sampled sources."""
        chosen = self.sampler.choose(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        logged: dict[str, list[float]] = {}
        weights: dict[str, float] = {}
        batches: dict[str, Any] = {}
        for _ in range(self.config.grad_accum):
            batches = {name: move(next(self.streams[name]), self.env.device) for name in chosen}
            losses, features = self._forward(batches)
            values = self._global_values(losses)
            bad = {t: v for t, v in values.items() if not math.isfinite(v)}
            if bad:
                return self._skip_nonfinite(bad)
            if not losses:
                continue  # no labelled sample of any task on this rank
            ctx = StepContext(
                step=self.step,
                backward=self._backward,
                loss_values=values,
                model=self.model,
                features=features,
                source_tasks={name: self.source_by_name[name].tasks for name in batches},
                env=self.env,
                scaler=self.scaler,
                grad_accum=self.config.grad_accum,
            )
            try:
                weights = self.balancer.backward(losses, ctx)
            except NonFiniteGradients as e:  # gradient-space methods check the task gradients
                return self._skip_nonfinite(e.values, what="gradient squared norm")
            for t, v in values.items():
                logged.setdefault(t, []).append(v)
        self.nonfinite_in_a_row = 0

        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        average_gradients(params, self.env)
        self.scaler.unscale_(self.optimizer)
        if self.config.l1:
            for p in self.model.parameters():
                if p.grad is not None and p.ndim > 1:
                    p.grad.add_(torch.sign(p.detach()), alpha=self.config.l1)
        grad_norm = None
        if self.config.clip_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.balancer.after_step(lambda: self._recompute(batches))
        record: dict[str, Any] = {f"loss/{t}": sum(v) / len(v) for t, v in logged.items()}
        record.update({f"weight/{t}": w for t, w in weights.items()})
        record.update(self.balancer.diagnostics())
        record["lr"] = self.scheduler.get_last_lr()[0]
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    @torch.no_grad()
    def _recompute(self, batches: dict[str, Any]) -> dict[str, float]:
        losses, _ = self._forward(batches)
        return self._global_values(losses)

    def _skip_nonfinite(self, bad: dict[str, float], what: str = "loss") -> dict[str, Any]:
        self.optimizer.zero_grad(set_to_none=True)
        self.nonfinite_in_a_row += 1
        self.nonfinite_total += 1
        described = ", ".join(f"task '{t}' {what}={v}" for t, v in bad.items())
        if self.nonfinite_in_a_row > self.config.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"non-finite {what} at step {self.step}: {described} "
                f"({self.nonfinite_in_a_row} step(s) in a row). Lower the learning rate, enable "
                "clip_grad_norm, check that task's labels, or raise max_nonfinite_steps to skip such steps."
            )
        warnings.warn(f"skipping step {self.step}: {described}", RuntimeWarning, stacklevel=2)
        return {"skipped_nonfinite": self.nonfinite_total}

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, split: str = "val") -> Results:
        sources = {"val": self.data.val, "test": self.data.test, "train": self.data.train}[split]
        return evaluate(self.model, sources, self.loading, self.env, self.autocast)

    def score(self, results: Results) -> float:
        monitor = self.config.monitor
        if monitor == "score":
            return aggregate_score(results, self.primary, self.directions)
        task, _, metric = monitor.partition("/")
        if task not in results or metric not in results[task]:
            raise ConfigError(f"monitor '{monitor}' is not among the validation results {sorted(results)}")
        return results[task][metric] if self.directions[task][metric] else -results[task][metric]

    # -- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "jointtrain.trainer/1",
            "step": self.step,
            "tasks": list(self.model.tasks),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "balancer": self.balancer.state_dict(),
            "streams": {name: s.state_dict() for name, s in self.streams.items()},
            "rng": rng_state(),
            "best_score": self.best_score,
            "evals_without_improvement": self.evals_without_improvement,
            "nonfinite_total": self.nonfinite_total,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "jointtrain.trainer/1":
            raise CheckpointError("not a jointtrain trainer checkpoint")
        if state["tasks"] != list(self.model.tasks):
            raise CheckpointError(
                f"checkpoint tasks {state['tasks']} differ from the config's {list(self.model.tasks)}"
            )
        if set(state["streams"]) != set(self.streams):
            raise CheckpointError(
                f"checkpoint data sources {sorted(state['streams'])} differ from {sorted(self.streams)}"
            )
        try:
            self.model.load_state_dict(state["model"])
            self.balancer.load_state_dict(state["balancer"])
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint does not match the model built from the config: {e}") from e
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name, s in state["streams"].items():
            self.streams[name].load_state_dict(s)
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best_score = float(state["best_score"])
        self.evals_without_improvement = int(state["evals_without_improvement"])
        self.nonfinite_total = int(state["nonfinite_total"])

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoints" / "last.pt" if self.out_dir else None

    def save_checkpoint(self) -> None:
        if self.out_dir is not None and self.env.is_main:
            save_state(self.checkpoint_path, self.state_dict())  # type: ignore[arg-type]
        barrier(self.env)

    def save_model(self, name: str) -> None:
        if self.out_dir is not None and self.env.is_main:
            self.model.save_pretrained(self.out_dir / name)
        barrier(self.env)

    # -- logging -----------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or not self.env.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            flat = {f"{record['split']}/{k}": v for k, v in _flatten(record).items() if isinstance(v, (int, float))}
            for k, v in flat.items():
                self._writer.add_scalar(k, v, record["step"])

    def _open_writer(self) -> None:
        if self.out_dir is None or not self.env.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._writer = SummaryWriter(str(self.out_dir / "tb"))

    # -- the loop ----------------------------------------------------------------------------
    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train until ``max_steps`` or early stopping; returns a summary with the best val results."""
        c = self.config
        if resume:
            if self.checkpoint_path is None:
                raise ConfigError("resume needs an out_dir holding checkpoints/last.pt")
            self.load_state_dict(load_state(self.checkpoint_path))
        else:
            seed_everything(c.seed + self.env.rank)
        self._open_writer()
        if self.env.is_main and self.step == 0:
            self.log(
                {
                    "split": "setup",
                    "step": 0,
                    "sampler": self.sampler.describe(),
                    "balancer": repr(self.balancer),
                    "world_size": self.env.world_size,
                    "device": str(self.env.device),
                    "amp": str(self.amp_dtype),
                    "config": asdict(c),
                }
            )
        self.model.train()
        status = "completed"
        best: Results = {}
        start = time.perf_counter()
        with _graceful_interrupt(self), _progress(self, c) as bar:
            while self.step < c.max_steps:
                record = self.train_step()
                self.step += 1
                bar.update(1)
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    bar.set_postfix(
                        {k.split("/", 1)[1]: f"{v:.3f}" for k, v in record.items() if k.startswith("loss/")},
                        refresh=False,
                    )
                    self.log({"split": "train", "step": self.step, "time": time.perf_counter() - start, **record})
                at_end = self.step == c.max_steps
                if (c.eval_every and self.step % c.eval_every == 0) or at_end:
                    results = self.evaluate("val") if self.data.val else {}
                    improved = self._track(results)
                    if improved:
                        best = results
                    self.save_checkpoint()
                    if (
                        self.evals_without_improvement
                        and self.evals_without_improvement >= c.early_stopping_patience > 0
                    ):
                        status = "early_stopped"
                        break
                if self._stop_requested:
                    self.save_checkpoint()
                    status = "interrupted"
                    break
        if status != "interrupted":
            self.save_model("final")
            if not self.data.val:  # no validation split: the final model is the best we know
                self.save_model("best")
        if self._writer is not None:
            self._writer.close()
        return {
            "status": status,
            "step": self.step,
            "best_score": self.best_score,
            "best_val": best,
            "nonfinite_steps": self.nonfinite_total,
        }

    def _track(self, results: Results) -> bool:
        """Log a validation result; save ``best/`` when the monitored score improves."""
        if not results:
            return False
        score = self.score(results)
        improved = score > self.best_score
        if improved:
            self.best_score, self.evals_without_improvement = score, 0
            self.save_model("best")
        else:
            self.evals_without_improvement += 1
        self.log({"split": "val", "step": self.step, "score": score, "tasks": results})
        return improved


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in record.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


@contextlib.contextmanager
def _graceful_interrupt(trainer: Trainer) -> Iterator[None]:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, stop. A second one aborts at once."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def request(signum: int, frame: Any) -> None:
        if trainer._stop_requested:
            raise KeyboardInterrupt
        trainer._stop_requested = True

    previous = {s: signal.signal(s, request) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _progress(trainer: Trainer, c: TrainConfig) -> Iterator[Any]:
    from tqdm.auto import tqdm

    bar = tqdm(
        total=c.max_steps,
        initial=trainer.step,
        disable=not (c.progress and trainer.env.is_main),
        dynamic_ncols=True,
        mininterval=1.0,
        desc=f"train {'+'.join(trainer.model.tasks)}",
    )
    try:
        yield bar
    finally:
        bar.close()
