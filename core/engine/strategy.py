"""Distributed strategies: how the step's forward is wrapped, how model gradients and model state
cross ranks. ``distributed: {strategy: ddp}`` (the default) or ``fsdp``; see docs/scaling.md.

Every method that touches other ranks is a collective: the trainer calls it on every rank.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from ..balancing import Balancer
from ..distributed import DistEnv
from ..model import JointModel
from ..registry import Registry

STRATEGIES: Registry[Strategy] = Registry("distributed strategy", builtins=("core.engine.ddp", "core.engine.fsdp"))


class Strategy:
    """Base: one process or any strategy whose model state is the plain ``state_dict``."""

    name: ClassVar[str]

    def wrap(self, model: JointModel, env: DistEnv, balancer: Balancer) -> nn.Module:
        """The module the trainer calls for a micro-batch's forward (``core.engine.ddp.StepForward``)."""
        raise NotImplementedError

    def reduces_in_backward(self, forward: nn.Module) -> bool:
        """Whether the wrapper reduces the model's gradients during backward: every rank must then run
        every backward, and the trainer does not average the model's gradients again."""
        return False

    def accumulating(self, forward: nn.Module, last: bool) -> contextlib.AbstractContextManager[Any]:
        """Around one micro-batch: gradient reduction only on the ``last`` one."""
        return contextlib.nullcontext()

    def gathered(self, forward: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """The model's parameters whole on every rank (evaluation outside the wrapped forward)."""
        return contextlib.nullcontext()

    def replicated(self, value: torch.Tensor) -> torch.Tensor:
        """A reduction over the parameters (the gradient norm) as a plain tensor on every rank."""
        return value

    def model_state(self, model: JointModel) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def optimizer_state(self, model: JointModel, balancer: Balancer, optimizer: torch.optim.Optimizer) -> Any:
        return optimizer.state_dict()

    def load(
        self, model: JointModel, balancer: Balancer, optimizer: torch.optim.Optimizer, state: dict[str, Any]
    ) -> None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def whole(self, model: JointModel, env: DistEnv) -> JointModel:
        """The model to export with ``save_pretrained`` (on rank 0)."""
        return model
