"""The functional API under DDP in a plain loop (no DDP wrapper): 2 gloo ranks, each on its half of
the batch with its local mean losses, train to the same parameters as one process on the whole batch."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core.balancing import LoopBalancer
from core.errors import ConfigError
from tests.core.balancing.test_functional import Net, data

# (method, space): "rep" passes the trunk's output as features
CASES = [("upgrad", "params"), ("upgrad", "rep"), ("config", "params"), ("mgda", "rep"), ("uw", "loss")]


def _train(rank: int, world: int) -> dict[str, torch.Tensor]:
    x, y = data(16)
    share = slice(rank * 16 // world, (rank + 1) * 16 // world)
    out = {}
    for name, space in CASES:
        model = Net()
        balancer = LoopBalancer(name, shared=model.shared(), tasks=["a", "b", "c"])
        optimizer = torch.optim.SGD([*model.parameters(), *balancer.parameters()], lr=0.3)
        for step in range(2):
            optimizer.zero_grad()
            losses, z = model.losses(x[share] * (step + 1), y[share])
            weights = balancer.backward(losses, z if space == "rep" else None)
            optimizer.step()
        out[f"{name}/{space}"] = nn.utils.parameters_to_vector([*model.parameters(), *balancer.parameters()]).detach()
        out[f"{name}/{space}/weights"] = torch.tensor(list(weights.values()))  # type: ignore[union-attr]
    return out


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.save(_train(rank, world), Path(out_dir) / f"rank{rank}.pt")
        model = Net()
        losses = (model.c(model.trunk(data(4)[0])) ** 2).squeeze(1)
        with pytest.raises(ConfigError, match="per-sample losses under DDP"):
            LoopBalancer("upgrad", shared=model.shared()).backward(losses)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_in_a_plain_loop_match_one_process(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single = _train(0, 1)
    for rank in range(2):
        ranked = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert ranked.keys() == single.keys()
        for key in single:
            assert torch.allclose(ranked[key], single[key], atol=1e-10), (key, rank)
