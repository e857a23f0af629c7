"""DDP equivalence: 2 gloo processes with batch B train exactly like 1 process with batch 2B."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from core.engine.rundir import RunDir
from core.experiments.run import train
from core.model import JointModel

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


CASES = {
    "ew-all-labels": {"balancing.name": "ew"},
    # missing labels are the normal case: each rank's masked mean must be weighted by its labelled count
    "uw-half-hidden": {"balancing.name": "uw", "data.label_fraction": 0.5},
    "dwa-half-hidden": {"balancing.name": "dwa", "balancing.period": 3, "data.label_fraction": 0.5},
    "ew-one-dataset-per-task": {
        "balancing.name": "ew",
        "data.regime": "per_task",
        "data.label_fraction": 0.5,
        "sampler.name": "round_robin",
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, case):
    common = {**CASES[case], "train.max_steps": 12, "train.eval_every": 6}
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
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=0), key
    # metrics gathered across ranks equal the single-process ones
    two_eval = RunDir(tmp_path / "two" / "run").summary()
    for task, metrics in single["tasks"].items():
        for name, value in metrics.items():
            assert two_eval["tasks"][task][name] == pytest.approx(value, abs=1e-4), (task, name)
