"""Applying a step's gradients: average across ranks, unscale, L1, clip, step unless non-finite, schedule."""

from __future__ import annotations

from typing import Any

import torch

from ..balancing import Balancer
from ..config import TrainConfig
from ..distributed import DistEnv, average_gradients
from ..model import JointModel
from .skip import poison, step_unless


class Update:
    """The optimizer step of the trainer's gradients. ``reduced``: DDP / FSDP already averaged the
    model's gradients during backward. ``skip_on_device``: whether the fused optimizer decides a
    skip on the device (an accelerator) or one free host read does (the CPU), see :mod:`.skip`."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        model: JointModel,
        balancer: Balancer,
        config: TrainConfig,
        env: DistEnv,
        replicated: Any,
        reduced: bool,
    ) -> None:
        self.optimizer, self.scheduler, self.scaler, self.model = optimizer, scheduler, scaler, model
        self.balancer, self.config, self.env, self.replicated, self.reduced = balancer, config, env, replicated, reduced
        self.skip_on_device = env.device.type != "cpu"

    def __call__(self, finite: torch.Tensor) -> torch.Tensor | None:
        """Average, unscale, L1, clip, then step unless ``finite`` is False (a device bool); the
        gradient norm before clipping when ``clip_grad_norm`` is set."""
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        synced = {id(p) for p in self.balancer.synchronised_parameters()}  # already global: not averaged again
        if self.reduced:
            synced |= {id(p) for p in self.model.parameters()}
        average_gradients([p for p in params if id(p) not in synced], self.env)
        scaler = self.scaler
        if scaler.is_enabled():
            poison(params, finite)  # the scaler skips and backs off, as for an overflow of its own
        scaler.unscale_(self.optimizer)
        if self.config.l1:
            for p in self.model.parameters():
                if p.grad is not None and p.ndim > 1:
                    p.grad.add_(torch.sign(p.detach()), alpha=self.config.l1)
        grad_norm = None
        if self.config.clip_grad_norm:
            grad_norm = self.replicated(torch.nn.utils.clip_grad_norm_(params, self.config.clip_grad_norm))
        if scaler.is_enabled():
            scaler.step(self.optimizer)
        else:
            step_unless(self.optimizer, finite, self.skip_on_device)
        scaler.update()
        self.scheduler.step()
        return grad_norm
