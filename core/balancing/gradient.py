"""Gradient-space balancing: a pure :class:`~.method.Method` run by the :class:`~.engine.GradientEngine`.

The registry holds one :class:`GradientMethod` entry per method; ``BALANCERS.build({"name":
"upgrad", "space": "params", **hyperparameters})`` gives a :class:`GradientBalancer` that owns the
method (``.method``) and the engine. ``build("upgrad").aggregate(J)`` / ``.weights(G)`` call the
pure method.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import ConfigError
from .base import Balancer, BalancerSetup, StepContext
from .engine import ENGINES, SPACES, GradientEngine, choose_engine, cosines
from .method import Method, Weighting, describe_method, hyperparameters

DDP = {
    "rep": "all-reduces the K x K Gramian; every rank applies the same weights",
    "params": "all-reduces the K task gradients once; shared gradients come back synchronised (global)",
}


class GradientBalancer(Balancer):
    """A gradient-space method (``method``) with its engine.

    Args:
        method: the pure weighting or aggregator.
        space: ``rep`` (gradients w.r.t. the shared representation) or ``params`` (exact gradients
            w.r.t. the shared parameters); see :mod:`.engine`.
        engine: how ``params`` computes the task gradients: ``auto`` (``gramian`` for weightings,
            ``loop`` for aggregators), ``gramian``, ``loop`` or ``batched`` (vmap; opt-in).
    """

    kind: ClassVar[str] = "gradient"
    space: ClassVar[str] = "gradient"  # alias of ``kind`` (see Balancer.space); the Jacobian space is ``grad_space``

    def __init__(self, method: Method, space: str = "params", engine: str = "auto") -> None:
        super().__init__()
        name = type(method).__name__
        if space not in SPACES:
            raise ConfigError(f"unknown gradient space '{space}'; valid: {', '.join(SPACES)}")
        if space not in method.spaces:
            raise ConfigError(f"{name} is defined only on space(s) {', '.join(method.spaces)}, not '{space}'")
        self.method = method
        self.grad_space, self.requested_engine = space, engine
        self.engine = GradientEngine(space, choose_engine(engine, method))
        self.tasks: list[str] = []

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        if not isinstance(self.method, Weighting):
            raise ConfigError(f"{type(self.method).__name__} is not a function of the Gramian; use aggregate(J)")
        return self.method.weights(gramian, losses, rows)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        return self.method.aggregate(jacobian, losses, rows)

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        known = self.tasks or list(losses)
        return self.engine.backward(self.method, losses, ctx, known)

    def synchronised_parameters(self) -> list[nn.Parameter]:
        return self.engine.synchronised

    def diagnostics(self) -> dict[str, float]:
        """Pairwise cosine similarities of the last step's task gradients (in the chosen space)."""
        if self.engine.last_gramian is None:
            return {}
        cos = cosines(self.engine.last_gramian).tolist()
        names = self.engine.last_tasks
        return {f"cos/{a}/{b}": cos[i][j] for i, a in enumerate(names) for j, b in enumerate(names) if i < j}

    def __repr__(self) -> str:
        return f"GradientBalancer({self.method!r}, space={self.grad_space!r}, engine={self.requested_engine!r})"


class GradientMethod:
    """Registry entry of a gradient-space method: ``entry(space=..., engine=..., **hyperparameters)``.

    Its signature is the method's hyperparameters plus ``space`` and ``engine``, so the registry
    refuses unknown arguments with the list of valid ones.
    """

    kind: ClassVar[str] = "gradient"
    space: ClassVar[str] = "gradient"  # alias of ``kind`` for today's ``jointtrain list`` (see Balancer.space)

    def __init__(self, method: type[Method]) -> None:
        self.method = method
        params = inspect.signature(method.__init__).parameters
        own = [params[n] for n in hyperparameters(method)]
        head = [
            inspect.Parameter("space", inspect.Parameter.KEYWORD_ONLY, default="params", annotation=str),
            inspect.Parameter("engine", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=str),
        ]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        self.__signature__ = inspect.Signature(head + keyword, return_annotation=GradientBalancer)
        self.__doc__ = method.__doc__
        self.cost, self.spaces, self.randomized = method.cost, method.spaces, method.randomized

    def __call__(self, space: str = "params", engine: str = "auto", **hyperparameters: Any) -> GradientBalancer:
        return GradientBalancer(self.method(**hyperparameters), space=space, engine=engine)

    def describe(self) -> dict[str, Any]:
        return {**describe_method(self.method), "ddp": DDP, "engines": list(ENGINES)}

    def __repr__(self) -> str:
        return f"GradientMethod({self.method.__name__})"
