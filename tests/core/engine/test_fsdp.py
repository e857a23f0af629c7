"""FSDP2 on gloo (CPU): 2 sharded processes with batch B train like 1 process with batch 2B; the
exported model loads; the gathered checkpoint resumes on one process; gradient methods are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from core.errors import ConfigError
from core.experiments.run import train
from core.io import load_state
from core.model import JointModel
from core.rundir.metrics_log import read_jsonl

from ..helpers import build_trainer, spawn, toy_config
from ..test_distributed import _join

COMMON = {
    "balancing.name": "uw",  # balancer parameters ride in the optimizer beside the sharded ones
    "data.label_fraction": 0.5,
    "train.grad_accum": 2,
    "train.clip_grad_norm": 0.5,  # a norm over sharded and plain (balancer) gradients
    "train.max_steps": 8,
    "train.eval_every": 4,
    "train.device": "cpu",
}


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    _join(rank, world_size, port)
    try:
        train(toy_config(Path(out), **COMMON, **{"loading.batch_size": 16, "distributed.strategy": "fsdp"}))
    finally:
        dist.destroy_process_group()


def test_two_sharded_processes_match_one_process_and_export_one_model(tmp_path):
    train(toy_config(tmp_path / "one", **COMMON, **{"loading.batch_size": 32}))
    spawn(_worker, str(tmp_path / "two"), timeout_s=240)
    (setup,) = [r for r in read_jsonl(tmp_path / "two" / "run" / "metrics.jsonl") if r["split"] == "setup"]
    assert setup["strategy"] == "fsdp" and setup["world_size"] == 2
    one = JointModel.from_pretrained(tmp_path / "one" / "run" / "final").state_dict()
    two = JointModel.from_pretrained(tmp_path / "two" / "run" / "final").state_dict()
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=0, msg=key)
    best = JointModel.from_pretrained(tmp_path / "two" / "run" / "best")
    assert set(best.state_dict()) == set(one)

    # the checkpoint is whole (gathered to rank 0): it resumes on one process
    state = load_state(tmp_path / "two" / "run" / "checkpoints" / "last.pt")
    assert all(isinstance(v, torch.Tensor) and v.shape == one[k].shape for k, v in state["model"].items())
    resumed = build_trainer(toy_config(tmp_path / "two", **COMMON, **{"distributed.strategy": "fsdp"}))
    resumed.load_state_dict(state)
    for key, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, two[key], atol=1e-6, rtol=0, msg=key)


def test_gradient_space_methods_are_refused_under_fsdp(tmp_path):
    config = toy_config(tmp_path, **{"balancing.name": "upgrad", "distributed.strategy": "fsdp"})
    with pytest.raises(ConfigError, match=r"per-task gradients.*strategy: ddp"):
        build_trainer(config, out_dir=None)


def test_an_unknown_strategy_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"ddp.*fsdp|fsdp.*ddp"):
        build_trainer(toy_config(tmp_path, **{"distributed.strategy": "zero"}), out_dir=None)
