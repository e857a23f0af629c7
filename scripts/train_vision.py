#!/usr/bin/env python
"""Train a joint image classifier + object detector on one timm backbone, then test it.

Defaults: the bundled digit-scenes demo (``scripts/configs/vision_digits.yaml``), CPU or GPU.

    python scripts/train_vision.py                      # joint: detection + count
    python scripts/train_vision.py --tasks detection    # single-task baseline, same budget
    python scripts/train_vision.py --device cuda        # channels_last + bf16 autocast + loader workers
    python scripts/train_vision.py --config my.yaml --set train.max_steps=3000

Prints the test metrics of the best checkpoint, the wall time and the training throughput.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait make training several times slower on a CPU shared
# with other processes; passive waiting costs nothing measurable on an idle machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from core.cli import format_results
from core.config import RunConfig
from core.distributed import resolve_device
from core.errors import ConfigError, JointTrainError
from core.experiments.builder import Experiment
from core.experiments.run import train
from core.io import atomic_write_json

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "vision_digits.yaml"


def select_tasks(experiment: Experiment, tasks: Sequence[str], output_dir: str | None) -> Experiment:
    """One task alone (a single-task baseline with the same budget), the way ``jointtrain compare`` runs it."""
    if len(tasks) != 1:
        raise ConfigError(f"--tasks takes one task of {list(experiment.config.tasks)} (the joint run uses all)")
    return experiment.single_task(tasks[0], output_dir or f"{experiment.config.output_dir}_{tasks[0]}")


def use_gpu(config: RunConfig) -> None:
    """Keep a GPU fed: loader workers and pinned memory, channels_last convolutions (AMP is on by default)."""
    config.train.channels_last = True
    config.loading.pin_memory = True
    config.loading.num_workers = config.loading.num_workers or min(8, os.cpu_count() or 1)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG))
    p.add_argument("--tasks", help="comma-separated subset of the config's tasks (single-task baselines)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: the config's train.device)")
    p.add_argument("--output-dir", help="run directory (default: the config's output_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the run in the output directory")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        overrides = list(args.set) + ([f"train.device={args.device}"] if args.device else [])
        experiment = Experiment.from_file(args.config, overrides)
        if args.tasks:
            experiment = select_tasks(
                experiment, [t.strip() for t in args.tasks.split(",") if t.strip()], args.output_dir
            )
        elif args.output_dir:
            experiment = experiment.with_overrides({"output_dir": args.output_dir})
        config = experiment.config
        if resolve_device(config.train.device).type == "cuda":
            use_gpu(config)
        report = train(config, resume=args.resume)
    except JointTrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if report.get("status") == "interrupted":
        print(f"interrupted at step {report['step']}; continue with --resume", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    images = report["step"] * config.loading.batch_size * config.train.grad_accum
    timing = {
        "wall_time_s": wall,
        "train_time_s": report["train_time_s"],
        "steps": report["step"],
        "train_images_per_s": images / report["train_time_s"],
    }
    atomic_write_json(Path(config.output_dir) / "timing.json", timing)
    print(
        format_results(report["tasks"], f"{report['split']} metrics of the best checkpoint ({', '.join(config.tasks)})")
    )
    print(
        f"time: {wall:.0f} s total, {report['train_time_s']:.0f} s training ({report['step']} steps, "
        f"{timing['train_images_per_s']:.0f} images/s per source batch, validation included)"
    )
    print(f"model: {config.output_dir}/best   predict: python scripts/predict.py {config.output_dir} IMAGE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
