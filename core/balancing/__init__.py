"""Task balancing methods, one file each, in one registry.

``build(name, **kwargs)`` makes a method; ``names()`` lists them. Gradient-space methods
register here too (see ``base.Balancer`` for the contract).
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .base import Balancer, BalancerSetup, LossBalancer, StepContext
from .dwa import DynamicWeightAverage
from .ew import EqualWeighting
from .famo import FAMO
from .gls import GeometricLossStrategy
from .rlw import RandomLossWeighting
from .uw import UncertaintyWeighting

BALANCERS: Registry[Balancer] = Registry("balancing method")
BALANCERS.register("ew")(EqualWeighting)
BALANCERS.register("uw")(UncertaintyWeighting)
BALANCERS.register("dwa")(DynamicWeightAverage)
BALANCERS.register("rlw")(RandomLossWeighting)
BALANCERS.register("gls")(GeometricLossStrategy)
BALANCERS.register("famo")(FAMO)


def build(name: str, **kwargs: Any) -> Balancer:
    return BALANCERS.build({"name": name, **kwargs})


def names() -> list[str]:
    return BALANCERS.names()


__all__ = ["BALANCERS", "Balancer", "BalancerSetup", "LossBalancer", "StepContext", "build", "names"]
