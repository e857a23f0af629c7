"""Small builders shared by the core tests: a tiny real problem, fast to train on 2 CPU cores."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch.multiprocessing as mp

from core.config import RunConfig, load_config


def toy_config(tmp_path: Any, **overrides: Any) -> RunConfig:
    """The sklearn digits toy with a small MLP; ``overrides`` are ``section.key=value`` pairs."""
    raw: dict[str, Any] = {
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": {"name": "mlp", "hidden": [64], "dropout": 0.0}},
        "tasks": {
            "digit": {"type": "classification", "num_classes": 10},
            "parity": {"type": "classification", "num_classes": 2},
        },
        "data": {"name": "sklearn_digits", "tasks": ["digit", "parity"]},
        "loading": {"batch_size": 32},
        "train": {"max_steps": 20, "lr": 0.003, "eval_every": 10, "progress": False, "log_every": 5},
        "report": {"enabled": False},  # tests/core/test_report.py covers the report; the rest skip its cost
    }
    return load_config(raw=raw, overrides=[f"{k}={json.dumps(v)}" for k, v in overrides.items()])


def build_trainer(config: RunConfig, out_dir: Any = "config") -> Any:
    """The trainer ``jointtrain train`` would build (``out_dir=None``: no run directory)."""
    from core.experiments.builder import Experiment

    return Experiment(config).trainer(out_dir=out_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn: Callable[..., None], *args: Any, nprocs: int = 2, timeout_s: float = 120) -> None:
    """``mp.spawn`` of ``fn(rank, nprocs, port, *args)`` with a deadline: a rank blocked in a
    collective fails the test instead of hanging the suite."""
    context = mp.start_processes(fn, args=(nprocs, free_port(), *args), nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=1):  # returns when one process ends: loop until all have
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"{nprocs} ranks did not finish within {timeout_s} s (a collective hangs)")
