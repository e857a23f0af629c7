"""DDP on gloo: 2 processes with batch B train exactly like 1 process with batch 2B, and never hang."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from core.experiments.run import train
from core.io import load_state
from core.model import JointModel
from core.rundir.directory import RunDir

from .helpers import build_trainer, spawn, toy_config


def _join(rank: int, world_size: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)


def _worker(rank: int, world_size: int, port: int, out: str, overrides: dict) -> None:
    _join(rank, world_size, port)
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
    # rare labels: a rank's micro-batch often holds no label of a task (or of any task) while the
    # other's does; both must still run the same backward and collectives
    # loss-space methods train through DistributedDataParallel: no_sync on accumulation micro-batches
    "uw-half-hidden-accumulated": {"balancing.name": "uw", "data.label_fraction": 0.5, "train.grad_accum": 2},
    # gradient-space methods keep the engine's own reduction
    "upgrad-rep-rare-labels": {"balancing.name": "upgrad", "data.label_fraction": 0.06},
    "mgda-params-rare-labels": {"balancing.name": "mgda", "balancing.space": "params", "data.label_fraction": 0.06},
}


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, case):
    common = {**CASES[case], "train.max_steps": 12, "train.eval_every": 6}
    single = train(toy_config(tmp_path / "one", **common, **{"loading.batch_size": 32}))
    spawn(_worker, str(tmp_path / "two"), {**common, "loading.batch_size": 16})

    one = JointModel.from_pretrained(tmp_path / "one" / "run" / "final").state_dict()
    two = JointModel.from_pretrained(tmp_path / "two" / "run" / "final").state_dict()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=1e-5, rtol=0), key
    # metrics gathered across ranks equal the single-process ones
    two_eval = RunDir(tmp_path / "two" / "run").summary()
    for task, metrics in single["tasks"].items():
        for name, value in metrics.items():
            assert two_eval["tasks"][task][name] == pytest.approx(value, abs=1e-4), (task, name)


def _stopping_worker(rank: int, world_size: int, port: int, out: str) -> None:
    """Rank 1 gets the signal during step 3 only; rank 0 never does."""
    _join(rank, world_size, port)
    try:
        config = toy_config(Path(out), **{"train.device": "cpu", "train.max_steps": 12, "train.log_every": 4})
        trainer = build_trainer(config)
        step = trainer.train_step

        def train_step() -> dict[str, Any]:
            if rank == 1 and trainer.step == 2:
                trainer.request_stop()
            return step()

        trainer.train_step = train_step  # type: ignore[method-assign]
        summary = trainer.fit()
        record = {"status": summary["status"], "step": summary["step"], "ddp": trainer.ddp}
        Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def test_a_stop_signal_on_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    spawn(_stopping_worker, str(tmp_path))
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # agreed at the next log step (4), not where rank 1 was signalled (3)
    assert summaries == [{"status": "interrupted", "step": 4, "ddp": True}] * 2  # ew: through DDP
    assert load_state(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


RESUME = {"train.device": "cpu", "train.eval_every": 3, "model.backbone.dropout": 0.2}


def _rng_worker(rank: int, world_size: int, port: int, out: str, max_steps: int) -> None:
    """Train (``max_steps`` > 0) or load ``last.pt`` and report this rank's torch RNG state."""
    _join(rank, world_size, port)
    try:
        config = toy_config(Path(out), **RESUME, **{"train.max_steps": max_steps or 3, "loading.batch_size": 16})
        if max_steps:
            train(config)
        else:
            trainer = build_trainer(config)
            trainer.load_state_dict(load_state(Path(out, "run", "checkpoints", "last.pt")))
            torch.save(torch.get_rng_state(), Path(out, f"rng{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_each_rank_resumes_its_own_rng_stream_and_a_smaller_world_resumes_too(tmp_path):
    spawn(_rng_worker, str(tmp_path), 3)
    saved = load_state(tmp_path / "run" / "checkpoints" / "last.pt")["rng"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])  # seed + rank
    spawn(_rng_worker, str(tmp_path), 0)
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"rng{rank}.pt"), saved[rank]["torch"]), rank
    # 2 -> 1 process: rank 0 takes its own state and training goes on
    summary = train(toy_config(tmp_path, **RESUME, **{"train.max_steps": 6, "loading.batch_size": 16}), resume=True)
    assert (summary["status"], summary["step"]) == ("completed", 6)
