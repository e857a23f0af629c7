"""2-process gloo DDP: gradient-space methods give the same parameters as one process on the global batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core.balancing import BalancerSetup, StepContext, build
from core.distributed import DistEnv, average_gradients
from tests.core.balancing.test_gradient_engine import TASKS, Tiny

CASES = [("mgda", "rep"), ("pcgrad", "params"), ("graddrop", "params")]
# "partial": task c labelled only on the first half of the global batch (rank 1 has no loss for it);
# "empty": no task labelled on the second half (rank 1 has no loss at all, yet joins the collectives)
PARTIAL = [("upgrad", "params"), ("mgda", "rep")]
REGIMES = {"full": CASES, "partial": PARTIAL, "empty": PARTIAL}


def _step(rank: int, world: int) -> dict[str, torch.Tensor]:
    """One SGD step per case on this rank's share of a fixed global batch of 16."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 5, generator=g), torch.randn(16, 3, generator=g)
    share = slice(rank * 16 // world, (rank + 1) * 16 // world)
    env = DistEnv(rank=rank, world_size=world)
    out = {}
    for regime, cases in REGIMES.items():
        first_half = torch.arange(16) < 8
        labelled = {t: first_half if regime == "empty" else torch.ones(16, dtype=torch.bool) for t in TASKS}
        if regime == "partial":
            labelled["c"] = first_half
        for name, space in cases:
            model = Tiny()
            method = build(name, space=space)
            method.setup(BalancerSetup(tasks=TASKS, task_weights={}, dataset_sizes={}, steps_per_epoch=1))
            z = model.backbone(x[share])
            losses, values = {}, {}
            for i, t in enumerate(TASKS):
                with torch.no_grad():  # the global masked mean, as the trainer all-reduces it
                    values[t] = float(
                        ((model.heads[t](model.backbone(x)).squeeze(1) - y[:, i]) ** 2)[labelled[t]].mean()
                    )
                # every rank gets every task labelled somewhere (an exact, connected zero where not here),
                # scaled so that averaging over ranks gives the global masked mean
                err = (model.heads[t](z).squeeze(1) - y[share, i]) ** 2
                losses[t] = torch.where(labelled[t][share], err, 0.0).sum() / int(labelled[t].sum()) * world
            ctx = StepContext(
                step=0,
                backward=lambda total: total.backward(),
                loss_values=values,
                model=model,
                features={"src": z},
                source_tasks={"src": TASKS},
                env=env,
            )
            method.backward(losses, ctx)
            synchronised = {id(p) for p in method.synchronised_parameters()}
            if env.enabled:  # params: the shared gradients are already global; averaging them again is waste
                assert bool(synchronised) == (space == "params")
            average_gradients([p for p in model.parameters() if id(p) not in synchronised], env)
            torch.optim.SGD(model.parameters(), lr=0.5).step()
            out[f"{name}/{space}/{regime}"] = nn.utils.parameters_to_vector(model.parameters()).detach()
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_step(rank, world), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("world", [2])
def test_two_process_gloo_matches_one_process(tmp_path: Path, world: int) -> None:
    mp.spawn(_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    single = _step(0, 1)
    for rank in range(world):
        ranked = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert ranked.keys() == single.keys() and len(single) == sum(map(len, REGIMES.values()))
        for key in single:
            assert torch.allclose(ranked[key], single[key], atol=1e-5), (key, rank)
