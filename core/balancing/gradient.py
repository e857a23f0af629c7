"""Gradient-space balancing: a pure :class:`~.method.Method` run by the :class:`~.engine.GradientEngine`.

The registry holds one :class:`GradientMethod` entry per method; ``BALANCERS.build({"name":
"upgrad", "space": "params", **hyperparameters})`` gives a :class:`GradientBalancer` that owns the
method (``.method``) and the engine. ``build("upgrad").aggregate(J)`` / ``.weights(G)`` call the
pure method.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
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
        loss_scales: first scale each loss by a learned ``e^(s_k)`` (IMTL-L, Liu et al., ICLR 2021:
            minimising ``e^(s_k) L_k - s_k`` drives every scaled loss to 1); the method then sees the
            scaled losses' gradients, and the heads their plain gradients. ``s_k`` are parameters
            trained by the trainer's optimizer; their gradient ``e^(s_k) l_k - 1`` comes from the
            detached, rank-averaged loss values (exact under DDP, no autograd).
    """

    kind: ClassVar[str] = "gradient"

    def __init__(self, method: Method, space: str = "params", engine: str = "auto", loss_scales: bool = False) -> None:
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
        self.loss_scales = bool(loss_scales)
        self.log_scales = nn.ParameterDict()

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        if setup.model is not None:
            self.engine.attach(setup.model)
        if self.loss_scales:
            for t in setup.tasks:
                self.log_scales[t] = nn.Parameter(torch.zeros(()))

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        if not isinstance(self.method, Weighting):
            raise ConfigError(f"{type(self.method).__name__} is not a function of the Gramian; use aggregate(J)")
        return self.method.weights(gramian, losses, rows)

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        return self.method.aggregate(jacobian, losses, rows)

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        known = self.tasks or list(losses)
        if not self.loss_scales:
            return self.engine.backward(self.method, losses, ctx, known)
        # every task with a loss on any rank (ctx.loss_values), so all ranks scale and step alike
        factors = {t: float(torch.exp(self.log_scales[t].detach())) for t in ctx.loss_values}  # host sync: K scalars
        amp = ctx.scaler.get_scale() if ctx.scaler is not None and ctx.scaler.is_enabled() else 1.0
        for t, f in factors.items():  # d/ds (e^s L - s), scaled like every other gradient for unscale_
            s = self.log_scales[t]
            grad = torch.full_like(s, (f * ctx.loss_values[t] - 1) * amp)
            s.grad = grad if s.grad is None else s.grad + grad
        scaled = {t: loss * factors[t] for t, loss in losses.items()}
        values = {t: v * factors[t] for t, v in ctx.loss_values.items()}
        return self.engine.backward(self.method, scaled, replace(ctx, loss_values=values), known)

    def synchronised_parameters(self) -> list[nn.Parameter]:
        return self.engine.synchronised

    def diagnostics(self) -> dict[str, float]:
        """Pairwise cosine similarities of the last step's task gradients (in the chosen space)."""
        if self.engine.last_gramian is None:
            return {}
        cos = cosines(self.engine.last_gramian).tolist()
        names = self.engine.last_tasks
        return {f"cos/{a}/{b}": cos[i][j] for i, a in enumerate(names) for j, b in enumerate(names) if i < j}

    def describe(self) -> dict[str, Any]:  # type: ignore[override]  # an instance knows its method and space
        return {**describe_method(type(self.method)), "space": self.grad_space, "ddp": DDP[self.grad_space]}

    def __repr__(self) -> str:
        scales = ", loss_scales=True" if self.loss_scales else ""
        return f"GradientBalancer({self.method!r}, space={self.grad_space!r}, engine={self.requested_engine!r}{scales})"


class GradientMethod:
    """Registry entry of a gradient-space method: ``entry(space=..., engine=..., **hyperparameters)``.

    Its signature is the method's hyperparameters plus ``space`` and ``engine``, so the registry
    refuses unknown arguments with the list of valid ones.
    """

    kind: ClassVar[str] = "gradient"

    def __init__(self, method: type[Method], loss_scales: bool = False) -> None:
        self.method, self.loss_scales = method, loss_scales
        params = inspect.signature(method.__init__).parameters
        own = [params[n] for n in hyperparameters(method)]
        head = [
            inspect.Parameter("space", inspect.Parameter.KEYWORD_ONLY, default="params", annotation=str),
            inspect.Parameter("engine", inspect.Parameter.KEYWORD_ONLY, default="auto", annotation=str),
            inspect.Parameter("loss_scales", inspect.Parameter.KEYWORD_ONLY, default=loss_scales, annotation=bool),
        ]
        keyword = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        self.__signature__ = inspect.Signature(head + keyword, return_annotation=GradientBalancer)
        self.__doc__ = method.__doc__
        self.cost, self.spaces, self.randomized = method.cost, method.spaces, method.randomized

    def __call__(
        self, space: str = "params", engine: str = "auto", loss_scales: bool | None = None, **hyperparameters: Any
    ) -> GradientBalancer:
        scales = self.loss_scales if loss_scales is None else loss_scales
        return GradientBalancer(self.method(**hyperparameters), space=space, engine=engine, loss_scales=scales)

    def describe(self) -> dict[str, Any]:
        return {**describe_method(self.method), "ddp": DDP, "engines": list(ENGINES)}

    def __repr__(self) -> str:
        scales = ", loss_scales=True" if self.loss_scales else ""
        return f"GradientMethod({self.method.__name__}{scales})"
