"""Combinations that cannot train, refused before anything runs, each with the fix."""

from __future__ import annotations

from ..balancing import Balancer
from ..data import DataBundle, check_sources
from ..errors import ConfigError
from ..model import JointModel
from ..sampling import TaskSampler


def check_combination(model: JointModel, data: DataBundle, balancer: Balancer, sampler: TaskSampler) -> None:
    """The data labels the model's tasks; the balancing method fits the architecture and the sampler."""
    check_sources(data, list(model.tasks))
    if getattr(balancer, "grad_space", None) == "rep" and not model.architecture.shared_representation:
        raise ConfigError(
            f"space 'rep' needs one representation that every task reads; architecture "
            f"'{model.architecture.spec()['name']}' has none (task layers read several shared tensors); "
            "use space 'params'"
        )
    if balancer.kind != "loss" and not sampler.all_sources and len(data.train) > 1:
        raise ConfigError(
            f"{type(balancer).__name__} balances task gradients and needs at least 2 tasks per step, but sampler "
            f"{type(sampler).__name__} picks one of the {len(data.train)} sources per step; use sampler 'all'"
        )
