"""What both integrations refuse alike, checked before the first step."""

from __future__ import annotations

from ..balancing import Balancer, LoopBalancer
from ..errors import ConfigError


def check_balancer(balancer: LoopBalancer, integration: str) -> None:
    """Refuse a method that learns from the losses re-evaluated after the optimizer step (``famo``):
    the library runs that step, so the integration never sees the losses change."""
    method = balancer.balancer
    if type(method).after_step is not Balancer.after_step:
        raise ConfigError(
            f"{type(method).__name__} learns from the losses after each optimizer step, which {integration} does "
            "not let the balancer observe; use another method here, or a plain loop that calls "
            "LoopBalancer.after_step, or jointtrain's Trainer"
        )
