"""Task balancing methods, one file each, in one registry.

``build(name, **kwargs)`` makes a method; ``names()`` lists them; ``BALANCERS.get(name).describe()``
says what it is (kind, spaces, cost, randomness, state, DDP behaviour) for ``jointtrain list``.
Loss-space methods are :class:`LossBalancer` classes; gradient-space methods are pure
:class:`Weighting` / :class:`Aggregator` classes registered through a :class:`GradientMethod`
entry, which builds a :class:`GradientBalancer` (method + task autograd). ``backward(losses,
shared=...)`` and :class:`LoopBalancer` run any of them in a hand-written training loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..registry import Registry, split_spec
from .aligned_mtl import AlignedMTL
from .base import Balancer, BalancerSetup, LossBalancer, NonFiniteGradients, StepContext
from .cagrad import CAGrad
from .config import ConFIG
from .cosmos import COSMOS
from .cr_mogm import CRMOGM
from .db_mtl import DBMTL
from .dualproj import DualProj
from .dwa import DynamicWeightAverage
from .ew import EqualWeighting
from .excess_mtl import ExcessMTL
from .fairgrad import FairGrad
from .famo import FAMO
from .functional import LoopBalancer, backward
from .gls import GeometricLossStrategy
from .graddrop import GradDrop
from .gradient import GradientBalancer, GradientMethod
from .gradnorm import GradNorm
from .gradvac import GradVac
from .imtl_g import IMTLG
from .imtl_l import IMTLL
from .method import Aggregator, Method, Weighting
from .mgda import MGDA
from .moco import MoCo
from .modo import MoDo
from .nash_mtl import NashMTL
from .pbi import PBI
from .pcd import PCD
from .pcgrad import PCGrad
from .rlw import RandomLossWeighting
from .sdmgrad import SDMGrad
from .stch import STCH
from .upgrad import UPGrad
from .uw import UncertaintyWeighting

BALANCERS: Registry[Balancer] = Registry("balancing method")
for _name, _loss in {
    "ew": EqualWeighting,
    "uw": UncertaintyWeighting,
    "dwa": DynamicWeightAverage,
    "rlw": RandomLossWeighting,
    "gls": GeometricLossStrategy,
    "famo": FAMO,
    "imtl_l": IMTLL,
    "stch": STCH,
    "cosmos": COSMOS,
    "pbi": PBI,
}.items():
    BALANCERS.register(_name)(_loss)

#: gradient-space methods by registry name
METHODS: dict[str, type[Method]] = {
    "mgda": MGDA,
    "pcgrad": PCGrad,
    "cagrad": CAGrad,
    "imtl_g": IMTLG,
    "nash_mtl": NashMTL,
    "aligned_mtl": AlignedMTL,
    "upgrad": UPGrad,
    "dualproj": DualProj,
    "graddrop": GradDrop,
    "gradvac": GradVac,
    "gradnorm": GradNorm,
    "db_mtl": DBMTL,
    "config": ConFIG,
    "fairgrad": FairGrad,
    "excess_mtl": ExcessMTL,
    "moco": MoCo,
    "sdmgrad": SDMGrad,
    "pcd": PCD,
    "modo": MoDo,
    "cr_mogm": CRMOGM,
}
for _name, _method in METHODS.items():
    BALANCERS.register(_name)(GradientMethod(_method))
# IMTL (Liu et al., ICLR 2021): IMTL-G on the gradients of IMTL-L's learned loss scales
BALANCERS.register("imtl")(GradientMethod(IMTLG, loss_scales=True))


def build(spec: str | Mapping[str, Any], **kwargs: Any) -> Balancer:
    """``build("upgrad", space="rep")`` or ``build({"name": "upgrad", "space": "rep"})``, as in a config."""
    name, given = split_spec(spec, BALANCERS.kind)
    return BALANCERS.build({"name": name, **given, **kwargs})


def names() -> list[str]:
    return BALANCERS.names()


__all__ = [
    "BALANCERS",
    "METHODS",
    "Aggregator",
    "Balancer",
    "BalancerSetup",
    "GradientBalancer",
    "GradientMethod",
    "LoopBalancer",
    "LossBalancer",
    "Method",
    "NonFiniteGradients",
    "StepContext",
    "Weighting",
    "backward",
    "build",
    "names",
]
