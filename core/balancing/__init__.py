"""Task balancing methods, one file each, in one registry.

``build(name, **kwargs)`` makes a method; ``names()`` lists them. Gradient-space methods
register here too (see ``base.Balancer`` for the contract).
"""

from __future__ import annotations

from typing import Any

from ..registry import Registry
from .aligned_mtl import AlignedMTL
from .base import Balancer, BalancerSetup, LossBalancer, NonFiniteGradients, StepContext
from .cagrad import CAGrad
from .db_mtl import DBMTL
from .dwa import DynamicWeightAverage
from .ew import EqualWeighting
from .famo import FAMO
from .gls import GeometricLossStrategy
from .graddrop import GradDrop
from .gradient import GradientBalancer, GramianBalancer
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl_g import IMTLG
from .mgda import MGDA
from .nash_mtl import NashMTL
from .pcgrad import PCGrad
from .rlw import RandomLossWeighting
from .upgrad import UPGrad
from .uw import UncertaintyWeighting

BALANCERS: Registry[Balancer] = Registry("balancing method")
BALANCERS.register("ew")(EqualWeighting)
BALANCERS.register("uw")(UncertaintyWeighting)
BALANCERS.register("dwa")(DynamicWeightAverage)
BALANCERS.register("rlw")(RandomLossWeighting)
BALANCERS.register("gls")(GeometricLossStrategy)
BALANCERS.register("famo")(FAMO)
BALANCERS.register("mgda")(MGDA)
BALANCERS.register("pcgrad")(PCGrad)
BALANCERS.register("cagrad")(CAGrad)
BALANCERS.register("imtl_g")(IMTLG)
BALANCERS.register("nash_mtl")(NashMTL)
BALANCERS.register("aligned_mtl")(AlignedMTL)
BALANCERS.register("upgrad")(UPGrad)
BALANCERS.register("graddrop")(GradDrop)
BALANCERS.register("gradvac")(GradVac)
BALANCERS.register("gradnorm")(GradNorm)
BALANCERS.register("db_mtl")(DBMTL)


def build(name: str, **kwargs: Any) -> Balancer:
    return BALANCERS.build({"name": name, **kwargs})


def names() -> list[str]:
    return BALANCERS.names()


__all__ = [
    "BALANCERS",
    "Balancer",
    "BalancerSetup",
    "GradientBalancer",
    "GramianBalancer",
    "LossBalancer",
    "NonFiniteGradients",
    "StepContext",
    "build",
    "names",
]
