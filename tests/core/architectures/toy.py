"""Small models and trainers for the architecture tests: a 3-block MLP, three tasks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from core.architectures import ARCHITECTURES
from core.backbones import MLPBackbone
from core.engine.trainer import Trainer
from core.experiments.builder import Experiment
from core.model import JointModel
from core.tasks import build_task

from ..helpers import toy_config

TASKS = {"a": 10, "b": 2, "c": 3}

#: one spec per registered architecture, small enough for 2 CPU cores; a tree for branched
SPECS: dict[str, dict[str, Any]] = {
    "hard": {"name": "hard"},
    "branched": {"name": "branched", "branch_point": 1, "groups": [{"tasks": ["<t0>", "<t1>"], "until": 2}]},
    "cross_stitch": {"name": "cross_stitch"},
    "mtan": {"name": "mtan"},
    "mmoe": {"name": "mmoe", "n_experts": 3, "expert_hidden": 16},
    "cgc": {"name": "cgc", "n_shared": 2, "n_task": 1, "expert_hidden": 16},
    "ple": {"name": "ple", "num_levels": 2, "n_shared": 2, "n_task": 1, "expert_hidden": 16},
    "dselect_k": {"name": "dselect_k", "n_experts": 4, "k": 2, "expert_hidden": 16},
}


def spec_of(name: str, tasks: Sequence[str] = tuple(TASKS)) -> dict[str, Any]:
    """The test spec of ``name``, its placeholders ``<t0>``, ``<t1>`` replaced by task names."""
    assert set(SPECS) == set(ARCHITECTURES.names()), "give every registered architecture a test spec"
    text = json.dumps(SPECS[name])
    for i, t in enumerate(tasks):
        text = text.replace(f'"<t{i}>"', json.dumps(t))
    return json.loads(text)


def toy_model(architecture: dict[str, Any] | None, seed: int = 0, hidden: tuple[int, ...] = (24, 24, 16)) -> JointModel:
    torch.manual_seed(seed)
    backbone = MLPBackbone(20, hidden=hidden, dropout=0.0)
    tasks = [build_task(t, {"type": "classification", "num_classes": k}, backbone) for t, k in TASKS.items()]
    return JointModel(
        backbone,
        tasks,
        {"name": "mlp", "in_dim": 20, "hidden": list(hidden), "dropout": 0.0},
        architecture=architecture,
    )


def toy_trainer(
    tmp_path: Any, architecture: dict[str, Any], balancing: dict[str, Any], regime: str, **overrides: Any
) -> Trainer:
    """Real training on sklearn digits (half the labels missing) through ``core.engine.trainer.Trainer``."""
    config = toy_config(
        tmp_path,
        **{
            "tasks.large": {"type": "classification", "num_classes": 2},
            "data.tasks": ["digit", "parity", "large"],
            "data.regime": regime,
            "data.label_fraction": 0.5,
            "model.backbone.hidden": [32, 32],
            "train.max_steps": 3,
            "train.eval_every": 3,
            "train.lr": 0.01,
            **overrides,
        },
    )
    return (
        Experiment(config)
        .with_overrides({"model.architecture": architecture, "balancing": balancing})
        .trainer(out_dir=tmp_path / "out")
    )
