"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer state sharded
over the ranks. ``distributed: {strategy: fsdp}`` under ``torchrun``; one process trains unsharded.

The unit is the step module (``core.engine.ddp.StepForward``: the encoder of every source of the
step and their task layers), not ``JointModel``, whose ``encode`` / ``decode`` are plain methods
that would bypass the hooks gathering the parameters. Its backward reduce-scatters averaged
gradients, as DDP's all-reduce would, so the trainer's masked-mean scaling stays exact.

Checkpoints hold the full model and optimizer state (``torch.distributed.checkpoint.state_dict``
gathers them to rank 0, on the CPU), so ``last.pt`` keeps one format, loads with
``weights_only=True`` and resumes on any number of ranks; the best and final models are exported
from a whole copy rebuilt on rank 0, loadable by ``JointModel.from_pretrained``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from ..balancing import Balancer
from ..distributed import DistEnv
from ..errors import ConfigError
from ..model import JointModel
from .ddp import StepForward
from .strategy import STRATEGIES, Strategy

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets it whole, on the CPU


def _with_balancer(model: JointModel, balancer: Balancer) -> nn.Module:
    """A module naming every parameter the optimizer holds (the model's and the balancer's)."""
    holder = nn.Module()
    holder.model, holder.balancer = model, balancer
    return holder


@STRATEGIES.register("fsdp")
class FSDPStrategy(Strategy):
    name = "fsdp"

    def wrap(self, model: JointModel, env: DistEnv, balancer: Balancer) -> nn.Module:
        if balancer.kind != "loss":
            raise ConfigError(
                f"balancing method {type(balancer).__name__} works on per-task gradients, which need the full "
                "parameters before any reduction; FSDP shards them. Use distributed.strategy: ddp for "
                "gradient-space methods (or a loss-space method with fsdp)"
            )
        step = StepForward(model)
        if env.enabled:
            fully_shard(step, mesh=init_device_mesh(env.device.type, (env.world_size,)))
        return step

    def reduces_in_backward(self, forward: nn.Module) -> bool:
        return isinstance(forward, FSDPModule)

    def accumulating(self, forward: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        return _gradient_sync(forward, last) if isinstance(forward, FSDPModule) else contextlib.nullcontext()

    @contextlib.contextmanager
    def gathered(self, forward: nn.Module) -> Iterator[None]:
        if not isinstance(forward, FSDPModule):
            yield
            return
        forward.unshard()  # every rank: all-gathers the parameters into the modules
        try:
            yield
        finally:
            forward.reshard()

    def replicated(self, value: torch.Tensor) -> torch.Tensor:
        return value.full_tensor() if isinstance(value, DTensor) else value  # a device collective, no host sync

    def model_state(self, model: JointModel) -> dict[str, torch.Tensor]:
        return get_model_state_dict(model, options=FULL)

    def optimizer_state(self, model: JointModel, balancer: Balancer, optimizer: torch.optim.Optimizer) -> Any:
        return get_optimizer_state_dict(_with_balancer(model, balancer), optimizer, options=FULL)

    def load(
        self, model: JointModel, balancer: Balancer, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        whole = StateDictOptions(full_state_dict=True)  # every rank read the file: each takes its shard
        set_model_state_dict(model, state["model"], options=whole)
        set_optimizer_state_dict(_with_balancer(model, balancer), optimizer, state["optimizer"], options=whole)

    def whole(self, model: JointModel, env: DistEnv) -> JointModel:
        if not env.enabled:
            return model
        state = self.model_state(model)
        if not env.is_main:
            return model  # not written: only rank 0 saves
        copy = JointModel.from_config(model.config())
        copy.load_state_dict(state)
        return copy


@contextlib.contextmanager
def _gradient_sync(forward: FSDPModule, last: bool) -> Iterator[None]:
    """No reduce-scatter on accumulation micro-batches but the last (FSDP's ``no_sync``)."""
    forward.set_requires_gradient_sync(last)
    try:
        yield
    finally:
        forward.set_requires_gradient_sync(True)
