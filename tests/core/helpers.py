"""Small builders shared by the core tests: a tiny real problem, fast to train on 2 CPU cores."""

from __future__ import annotations

import json
from typing import Any

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
