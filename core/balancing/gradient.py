"""Gradient-space balancing: a pure :class:`~.method.Method` run by :class:`~.autograd.TaskAutograd`.

The registry holds one :class:`GradientMethod` entry per method; ``BALANCERS.build({"name":
"upgrad", "space": "params", **hyperparameters})`` gives a :class:`GradientBalancer` that owns the
method (``.method``) and its task autograd (``.autograd``). ``build("upgrad").aggregate(J)`` /
``.weights(G)`` call the pure method.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .autograd import ENGINES, SPACES, Targets, TaskAutograd, choose_engine, cosines, feature_tensors
from .base import Balancer, BalancerSetup, StepContext
from .method import Method, Weighting, describe_method, hyperparameters

DDP = {
    "rep": "all-reduces the K x K Gramian; every rank applies the same weights",
    "params": "all-reduces the K task gradients once; shared gradients come back synchronised (global)",
}


class GradientBalancer(Balancer):
    """A gradient-space method (``method``) with its task autograd.

    Args:
        method: the pure weighting or aggregator.
        space: ``rep`` (gradients w.r.t. the shared representation) or ``params`` (exact gradients
            w.r.t. the shared parameters); see :mod:`.autograd`.
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
        _check_space(method, space)
        self.method = method
        self.grad_space, self.requested_engine = space, engine
        self.autograd = TaskAutograd(space, choose_engine(engine, method))
        self.tasks: list[str] = []
        self.loss_scales = bool(loss_scales)
        self.log_scales = nn.ParameterDict()

    def use_space(self, space: str) -> None:
        """Switch the gradient space (the method and its state stay): for a loop that decides per call."""
        if space == self.grad_space:
            return
        _check_space(self.method, space)
        if self.autograd.recorder is not None:  # a params module is hooked again at its next params call
            self.autograd.recorder.remove()
        self.grad_space, self.autograd = space, TaskAutograd(space, self.autograd.engine)

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)
        self.method.name_tasks(setup.tasks)
        if setup.model is not None:
            shared = setup.shared if setup.shared is not None else list(setup.model.shared_parameters())  # type: ignore[operator]
            self.autograd.attach(setup.model, shared)
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
        if not self.loss_scales:
            return self._run(losses, ctx, ctx.loss_values)
        # every task with a loss on any rank (ctx.loss_values), so all ranks scale and step alike
        factors = {t: float(torch.exp(self.log_scales[t].detach())) for t in ctx.loss_values}  # host sync: K scalars
        amp = ctx.scaler.get_scale() if ctx.scaler is not None and ctx.scaler.is_enabled() else 1.0
        for t, f in factors.items():  # d/ds (e^s L - s), scaled like every other gradient for unscale_
            s = self.log_scales[t]
            grad = torch.full_like(s, (f * ctx.loss_values[t] - 1) * amp)
            s.grad = grad if s.grad is None else s.grad + grad
        scaled = {t: loss * factors[t] for t, loss in losses.items()}
        return self._run(scaled, ctx, {t: v * factors[t] for t, v in ctx.loss_values.items()})

    def _run(self, losses: dict[str, Tensor], ctx: StepContext, loss_values: Mapping[str, Any]) -> dict[str, float]:
        known = self.tasks or list(losses)
        values = torch.tensor([loss_values[t] for t in losses], dtype=torch.float64)
        rows = [known.index(t) for t in losses]
        return self.autograd.backward(self.method, losses, self._targets(losses, ctx), values, rows)

    def _targets(self, losses: dict[str, Tensor], ctx: StepContext) -> Targets:
        """The step context as explicit targets: the model's shared / other parameters unless given."""
        name = type(self.method).__name__
        shared, others = ctx.shared, ctx.others
        if shared is None or others is None:
            if ctx.model is None:
                raise ConfigError(f"{name} needs the model (or the shared parameters) in the step context")
            model_shared = list(ctx.model.shared_parameters())  # type: ignore[operator]
            ids = {id(p) for p in model_shared}
            shared = model_shared if shared is None else shared
            others = (
                [p for p in ctx.model.parameters() if p.requires_grad and id(p) not in ids]
                if others is None
                else others
            )
        features: list[Tensor] = []
        if self.grad_space == "rep":
            sources = [s for s in ctx.features if set(ctx.source_tasks.get(s, [])) & set(losses)]
            if len(sources) != 1:
                raise ConfigError(
                    f"{name} with space 'rep' needs all tasks on one shared input batch, but this step has "
                    f"{len(sources)} sources ({', '.join(sources)}); use space 'params' for one dataset per task"
                )
            features = feature_tensors(ctx.features[sources[0]])
        return Targets(
            shared=[p for p in shared if p.requires_grad],
            others=list(others),
            features=features,
            scaler=ctx.scaler,
            env=ctx.env,
            module=ctx.model,
            independent=ctx.independent_samples,
        )

    def synchronised_parameters(self) -> list[nn.Parameter]:
        return self.autograd.synchronised

    def diagnostics(self) -> dict[str, float]:
        """Pairwise cosine similarities of the last step's task gradients (in the chosen space)."""
        if self.autograd.last_gramian is None:
            return {}
        cos = cosines(self.autograd.last_gramian).tolist()
        names = self.autograd.last_tasks
        return {f"cos/{a}/{b}": cos[i][j] for i, a in enumerate(names) for j, b in enumerate(names) if i < j}

    def describe(self) -> dict[str, Any]:  # type: ignore[override]  # an instance knows its method and space
        return {**describe_method(type(self.method)), "space": self.grad_space, "ddp": DDP[self.grad_space]}

    def __repr__(self) -> str:
        scales = ", loss_scales=True" if self.loss_scales else ""
        return f"GradientBalancer({self.method!r}, space={self.grad_space!r}, engine={self.requested_engine!r}{scales})"


def _check_space(method: Method, space: str) -> None:
    if space not in SPACES:
        raise ConfigError(f"unknown gradient space '{space}'; valid: {', '.join(SPACES)}")
    if space not in method.spaces:
        raise ConfigError(
            f"{type(method).__name__} is defined only on space(s) {', '.join(method.spaces)}, not '{space}'"
        )


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
