"""DDP equivalence: 2 gloo processes with batch B train exactly like 1 process with batch 2B."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.model import JointModel
from core.run import train

from .helpers import toy_config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, out: str, overrides: dict) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        train(toy_config(Path(out), **overrides, **{"train.device": "cpu"}))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["ew", "uw", "dwa"])
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, method):
    common = (
        {"balancing.name": method, "train.max_steps": 12, "train.eval_every": 6, "balancing.period": 3}
        if method == "dwa"
        else {"balancing.name": method, "train.max_steps": 12, "train.eval_every": 6}
    )
    single = train(toy_config(tmp_path / "one", **common, **{"loading.batch_size": 32}))
    mp.spawn(
        _worker,
        args=(2, _free_port(), str(tmp_path / "two"), {**common, "loading.batch_size": 16}),
        nprocs=2,
        join=True,
    )

    one = JointModel.from_pretrained(tmp_path / "one" / "run" / "final").state_dict()
    two = JointModel.from_pretrained(tmp_path / "two" / "run" / "final").state_dict()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=2e-5, rtol=1e-4), key
    # metrics gathered across ranks equal the single-process ones
    two_eval = json.loads((tmp_path / "two" / "run" / "eval.json").read_text())
    for task, metrics in single["tasks"].items():
        for name, value in metrics.items():
            assert two_eval["tasks"][task][name] == pytest.approx(value, abs=1e-4), (task, name)
