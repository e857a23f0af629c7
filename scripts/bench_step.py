"""Time the engine's training step against a hand-written loop, and count host syncs per step.

Same model (a copy of the trainer's), same batch, same optimizer and schedule: the hand loop is
``zero_grad, forward, sum of the tasks' masked means (sum / count on the device), backward, step``;
the engine's step adds the global masked mean, balancing (``ew``), non-finite checks and its record. Timings are
interleaved and the median of ``--repeats`` rounds of ``--steps`` steps is kept. Host syncs: on
CUDA those ``torch.cuda.set_sync_debug_mode`` reports, everywhere those ``HostSyncCounter``
sees (value reads and data-dependent shapes, see ``core.engine.host_syncs``).

    python scripts/bench_step.py                           # CPU, digits MLP, ~30 s on 2 cores
    python scripts/bench_step.py --device cuda --hidden 2048 --batch 512 --json step.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

from core.config import load_config
from core.data import move
from core.engine.host_syncs import HostSyncCounter
from core.engine.optim import build_optimizer, build_scheduler
from core.engine.trainer import Trainer
from core.experiments.builder import Experiment


def make_trainer(args: argparse.Namespace) -> Trainer:
    raw = {
        "output_dir": "unused",
        "model": {"backbone": {"name": "mlp", "hidden": [args.hidden, args.hidden], "dropout": 0.0}},
        "tasks": {
            "digit": {"type": "classification", "num_classes": 10},
            "parity": {"type": "classification", "num_classes": 2},
            "large": {"type": "classification", "num_classes": 2},
        },
        "data": {"name": "sklearn_digits", "tasks": ["digit", "parity", "large"], "label_fraction": 0.7},
        "loading": {"batch_size": args.batch},
        "train": {"max_steps": 10**6, "device": args.device, "amp": args.amp, "progress": False},
        "balancing": {"name": args.balancing},
    }
    return Experiment(load_config(raw=raw)).trainer(out_dir=None)


def hand_step(trainer: Trainer, batch: dict[str, Any]) -> Callable[[], None]:
    model = copy.deepcopy(trainer.model)
    optimizer = build_optimizer(model, trainer.balancer, trainer.config)
    scheduler = build_scheduler(optimizer, trainer.config)
    tasks = list(model.tasks)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        moved = move(batch, trainer.env.device)  # as the engine does: the batch comes from the CPU each step
        with trainer.precision.autocast():
            outputs = model(moved["inputs"], tasks)
            parts = [model.tasks[t].masked_loss(outputs[t], moved[model.tasks[t].label_key]) for t in tasks]
        sum(total / count.clamp_min(1) for total, count in parts).backward()  # type: ignore[union-attr]
        optimizer.step()
        scheduler.step()

    return step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # host sync: only to end a timing


def seconds_per_step(step: Callable[[], None], steps: int, device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def host_syncs(step: Callable[[], None], device: torch.device) -> dict[str, Any]:
    with HostSyncCounter() as counter:
        step()
    out: dict[str, Any] = {"counted": counter.total, "calls": dict(counter.calls)}
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        out["cuda_sync_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    trainer = make_trainer(args)
    device = trainer.env.device
    (name,) = trainer.streams
    batch = next(trainer.streams[name])  # on the CPU: both steps move it (the engine also checks its labels)
    trainer.streams[name] = itertools.repeat(batch)  # type: ignore[assignment]  # the same batch every step
    trainer.model.train()
    engine, hand = trainer.train_step, hand_step(trainer, batch)
    for fn in (engine, hand):  # warm-up: allocator, kernels, lazy state
        seconds_per_step(fn, 3, device)
    times: dict[str, list[float]] = {"engine": [], "hand": []}
    for _ in range(args.repeats):
        times["engine"].append(seconds_per_step(engine, args.steps, device))
        times["hand"].append(seconds_per_step(hand, args.steps, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "device": str(device),
        "amp": str(trainer.precision.dtype),
        "batch": args.batch,
        "hidden": args.hidden,
        "balancing": args.balancing,
        "engine_s_per_step": med["engine"],
        "hand_s_per_step": med["hand"],
        "ratio": med["engine"] / med["hand"],
        "engine_syncs_per_step": host_syncs(engine, device),
        "hand_syncs_per_step": host_syncs(hand, device),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="off", help="off, bf16, fp16 or auto")
    parser.add_argument("--balancing", default="ew")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    result = run(args)
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
