"""One micro-batch's forward as one module call, wrapped in ``DistributedDataParallel`` where it fits.

Loss-space balancing backpropagates one combined loss, which is what DDP overlaps with its
bucketed gradient all-reduce; it trains through DDP under ``torchrun``. Gradient-space methods need
each task's gradient before any averaging, so they keep the engine's own flat all-reduce
(``core.distributed.average_gradients``). DDP sees one forward per backward: the encoder of every
source of the step and their task layers in a single call.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..balancing import Balancer
from ..distributed import DistEnv, connected_zero
from ..model import JointModel
from .strategy import STRATEGIES, Strategy


class StepForward(nn.Module):
    """``(inputs per source, tasks per source) -> (features per source, task outputs per source)``."""

    def __init__(self, model: JointModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, inputs: dict[str, Any], tasks: dict[str, list[str]]
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        features = {name: self.model.encode(x) for name, x in inputs.items()}
        return features, {name: self.model.decode(features[name], tasks[name]) for name in inputs}


def step_forward(model: JointModel, env: DistEnv, kind: str) -> StepForward | DistributedDataParallel:
    """DDP for loss-space methods on several ranks, else the plain call.

    ``find_unused_parameters``: a step may sample only some sources, so some heads get no gradient.
    """
    step = StepForward(model)
    if not env.enabled or kind != "loss":
        return step
    device_ids = [env.device] if env.device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=device_ids, find_unused_parameters=True)


@STRATEGIES.register("ddp")
class DDPStrategy(Strategy):
    """DDP for loss-space methods on several ranks; the engine's own reduction otherwise."""

    name = "ddp"

    def wrap(self, model: JointModel, env: DistEnv, balancer: Balancer) -> nn.Module:
        return step_forward(model, env, balancer.kind)

    def reduces_in_backward(self, forward: nn.Module) -> bool:
        return isinstance(forward, DistributedDataParallel)

    def accumulating(self, forward: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        """DDP's ``no_sync`` on every accumulation micro-batch but the last: one all-reduce per step."""
        if isinstance(forward, DistributedDataParallel) and not last:
            return forward.no_sync()
        return contextlib.nullcontext()


def unused_zero(outputs: dict[str, dict[str, Any]], losses: dict[str, Any]) -> torch.Tensor | None:
    """A zero reaching the outputs of the tasks outside ``losses`` (None if there are none).

    DDP waits for a gradient of every parameter its forward reached; added to the loss, this
    gives those tasks' layers a zero one (the trainer drops it after the step, as without DDP).
    """
    rest = [o for per_task in outputs.values() for t, o in per_task.items() if t not in losses]
    return connected_zero(rest) if rest else None
