"""Gradient-space balancing: the per-task gradient engine and the base classes of its methods.

A gradient-space method is a function of the K x P task Jacobian ``J`` (one row per task):
:meth:`GradientBalancer.aggregate` maps it to the P-vector update. Most methods only need the
K x K Gramian ``G = J J^T``: they subclass :class:`GramianBalancer`, implement ``weights(G)``,
and the update is ``w^T J``. The engine gives each method one of two Jacobians (``space``):

- ``rep``: gradients of each task loss w.r.t. the shared representation (MGDA-UB style). Each
  head is backpropagated alone (cheap), then ONE backward runs through the backbone with the
  aggregated representation gradient. Needs all tasks on one input batch (one source per step).
- ``params``: exact gradients w.r.t. the shared parameters, all K at once with
  ``autograd.grad(..., is_grads_batched=True)`` (vmap over the backward) when ``engine`` allows,
  else K ``autograd.grad`` calls on the retained graph. The aggregate is written into ``.grad``
  directly: no extra backward. Works in every sampling regime (one source per task included).

Task-specific parameters (heads) always get the plain, unweighted gradient of their own loss.

Composition with the trainer, per micro-batch:
- AMP: task gradients are taken of the *scaled* losses (no fp16 underflow), unscaled to fp32
  before aggregation, and the update is re-scaled so the trainer's ``scaler.unscale_`` holds.
- Non-finite task gradients: with an fp16 scaler the plain sum is backpropagated so the scaler
  sees the overflow and skips the step; otherwise :class:`NonFiniteGradients` is raised and the
  trainer skips the step (``max_nonfinite_steps``), as for a non-finite loss.
- Gradient accumulation: each micro-batch's Jacobian is aggregated on its own and the updates
  are summed (divided by ``grad_accum``), i.e. the method sees per-micro-batch gradients.
- DDP: every rank aggregates the *global* Jacobian, so all ranks apply the same update. ``rep``:
  the representation rows of different ranks are disjoint, so the global Gramian is the sum of
  the local ones (one K x K all-reduce) and each rank backpropagates ``sum_k w_k g_k``; the
  trainer's gradient averaging completes the global update. ``params``: one all-reduce of the
  stacked task gradients, then every rank computes the same update.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from .base import Balancer, BalancerSetup, NonFiniteGradients, StepContext

SPACES = ("rep", "params")
ENGINES = ("auto", "batched", "loop")


def feature_tensors(features: Any) -> list[Tensor]:
    """The floating tensors of a (nested) representation that carry gradient to the backbone."""
    if isinstance(features, Tensor):
        return [features] if features.requires_grad and features.is_floating_point() else []
    if isinstance(features, dict):
        return [t for v in features.values() for t in feature_tensors(v)]
    if isinstance(features, (list, tuple)):
        return [t for v in features for t in feature_tensors(v)]
    return []


def cosines(gramian: Tensor) -> Tensor:
    """Pairwise cosine similarities of the rows of J, from its Gramian."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return gramian / (norms[:, None] * norms[None, :]).clamp_min(1e-30)


class GradientBalancer(Balancer):
    """Base of gradient-space methods: the engine, diagnostics and the ``aggregate`` contract.

    Args:
        space: ``rep`` (gradients w.r.t. the shared representation) or ``params`` (exact
            gradients w.r.t. the shared parameters); see the module docstring.
        engine: how ``params`` computes the K task gradients: ``batched`` (one vmapped backward),
            ``loop`` (K backwards on the retained graph) or ``auto`` (batched on CUDA, else loop;
            batched falls back to loop where vmap is unsupported).
    """

    space: ClassVar[str] = "gradient"
    #: the Jacobian spaces the method is defined on
    spaces: ClassVar[tuple[str, ...]] = SPACES

    def __init__(self, space: str = "params", engine: str = "auto") -> None:
        super().__init__()
        if space not in SPACES:
            raise ConfigError(f"unknown gradient space '{space}'; valid: {', '.join(SPACES)}")
        if space not in self.spaces:
            raise ConfigError(
                f"{type(self).__name__} is defined only on space(s) {', '.join(self.spaces)}, not '{space}'"
            )
        if engine not in ENGINES:
            raise ConfigError(f"unknown gradient engine '{engine}'; valid: {', '.join(ENGINES)}")
        self.wrt, self.engine = space, engine
        self.tasks: list[str] = []
        self._batched_failed = False
        self._last_gramian: Tensor | None = None
        self._last_tasks: list[str] = []

    def setup(self, setup: BalancerSetup) -> None:
        super().setup(setup)

    # -- the pure contract -------------------------------------------------------------------
    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        """Map the K x P Jacobian to the P-vector update.

        ``losses`` (K) is needed only by methods that use the loss values (GradNorm, DB-MTL);
        ``rows`` says which of the setup's tasks the rows are (default: rows 0..K-1), for methods
        keeping per-task state.
        """
        raise NotImplementedError

    def applied_weights(self, jacobian: Tensor, update: Tensor) -> Tensor:
        """Per-task weight of an update that is not a plain combination: ``<u, g_k> / |g_k|^2``."""
        return (jacobian @ update) / (jacobian * jacobian).sum(1).clamp_min(1e-30)

    def diagnostics(self) -> dict[str, float]:
        """Pairwise cosine similarities of the last step's task gradients (in the chosen space)."""
        if self._last_gramian is None:
            return {}
        cos = cosines(self._last_gramian).tolist()
        names = self._last_tasks
        return {f"cos/{a}/{b}": cos[i][j] for i, a in enumerate(names) for j, b in enumerate(names) if i < j}

    def extra_repr(self) -> str:
        return f"space={self.wrt!r}, engine={self.engine!r}"

    # -- the engine --------------------------------------------------------------------------
    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        if ctx.model is None:
            raise ConfigError(f"{type(self).__name__} needs the model in the step context")
        if self.wrt == "rep":
            return self._backward_rep(losses, ctx)
        return self._backward_params(losses, ctx)

    def _rows(self, tasks: list[str]) -> list[int]:
        known = self.tasks or tasks
        return [known.index(t) for t in tasks]

    def _amp_scale(self, ctx: StepContext, device: torch.device) -> Tensor:
        if ctx.scaler is not None and ctx.scaler.is_enabled():
            return ctx.scaler.scale(torch.ones((), device=device))
        return torch.ones((), device=device)

    def _check_finite(self, gramian: Tensor, tasks: list[str], losses: dict[str, Tensor], ctx: StepContext) -> bool:
        """False (after backpropagating the plain sum for the fp16 scaler) when gradients overflowed."""
        if bool(torch.isfinite(gramian).all()):
            return True
        if ctx.scaler is not None and ctx.scaler.is_enabled():
            ctx.backward(sum(losses.values()))  # type: ignore[arg-type]
            return False
        bad = {t: float(gramian[i, i]) for i, t in enumerate(tasks) if not torch.isfinite(gramian[i]).all()}
        raise NonFiniteGradients(bad)

    def _loss_vector(self, tasks: list[str], ctx: StepContext) -> Tensor:
        return torch.tensor([ctx.loss_values[t] for t in tasks], dtype=torch.float64)

    def _backward_rep(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        sources = [name for name in ctx.features if set(ctx.source_tasks.get(name, [])) & set(losses)]
        if len(sources) != 1:
            raise ConfigError(
                f"{type(self).__name__} with space 'rep' needs all tasks on one shared input batch, but this step "
                f"has {len(sources)} sources ({', '.join(sources)}); use space 'params' for one dataset per task"
            )
        z = feature_tensors(ctx.features[sources[0]])
        tasks = list(losses)
        device = z[0].device
        scale = self._amp_scale(ctx, device)
        rows = []
        for t in tasks:  # each head alone: cheap, and the backbone graph is kept for the one backward below
            grads = torch.autograd.grad(losses[t] * scale, z, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([g.reshape(-1) for g in _filled(grads, z)]))
        jac = torch.stack(rows).float() / scale
        gramian = jac @ jac.T
        if ctx.env.enabled:  # disjoint samples per rank: the global Gramian is the sum of the local ones
            gramian = self._global_gramian(gramian, tasks, ctx)
        self._remember(gramian, tasks)
        if not self._check_finite(gramian, tasks, losses, ctx):
            return {t: 1.0 for t in tasks}
        update, weights = self._update(jac, gramian, tasks, ctx)
        factor = scale / ctx.grad_accum
        offset, vectors = 0, []
        for x in z:
            vectors.append((update[offset : offset + x.numel()] * factor).view_as(x).to(x.dtype))
            offset += x.numel()
        torch.autograd.backward(z, vectors, retain_graph=True)  # the one backbone backward
        heads = self._head_params(ctx.model)  # type: ignore[arg-type]
        if heads:
            torch.autograd.backward(sum(losses.values()) * factor, inputs=heads)  # type: ignore[arg-type]
        return {t: float(w) for t, w in zip(tasks, weights.tolist(), strict=True)}

    def _global_gramian(self, gramian: Tensor, tasks: list[str], ctx: StepContext) -> Tensor:
        index = self._rows(tasks)
        k = len(self.tasks)
        full = torch.zeros(k, k, device=gramian.device, dtype=gramian.dtype)
        full[torch.tensor(index)[:, None], torch.tensor(index)[None, :]] = gramian
        dist.all_reduce(full)
        # the global loss is the mean of the per-rank losses, so each rank's rows carry a 1/R factor
        full /= ctx.env.world_size**2
        return full[torch.tensor(index)[:, None], torch.tensor(index)[None, :]]

    def _update(self, jac: Tensor, gramian: Tensor, tasks: list[str], ctx: StepContext) -> tuple[Tensor, Tensor]:
        """The update of this (global) Jacobian and the per-task weights reported for it."""
        losses = self._loss_vector(tasks, ctx)
        update = self.aggregate(jac, losses, self._rows(tasks))
        return update, self.applied_weights(jac, update)

    def _remember(self, gramian: Tensor, tasks: list[str]) -> None:
        self._last_gramian, self._last_tasks = gramian.detach(), list(tasks)

    @staticmethod
    def _head_params(model: nn.Module) -> list[nn.Parameter]:
        shared = {id(p) for p in model.shared_parameters()}  # type: ignore[operator]
        return [p for p in model.parameters() if p.requires_grad and id(p) not in shared]

    def _backward_params(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float]:
        model = ctx.model
        shared = [p for p in model.shared_parameters() if p.requires_grad]  # type: ignore[union-attr]
        heads = self._head_params(model)  # type: ignore[arg-type]
        tasks = list(losses)
        device = next(iter(losses.values())).device
        scale = self._amp_scale(ctx, device)
        grads = self.task_gradients([losses[t] * scale for t in tasks], shared + heads)
        jac = torch.cat([g.reshape(len(tasks), -1) for g in grads[: len(shared)]], 1).float() / scale
        if ctx.env.enabled:
            jac = self._global_jacobian(jac, tasks, ctx)
        gramian = jac @ jac.T
        self._remember(gramian, tasks)
        if not self._check_finite(gramian, tasks, losses, ctx):
            return {t: 1.0 for t in tasks}
        update, weights = self._update(jac, gramian, tasks, ctx)
        factor = scale / ctx.grad_accum
        offset = 0
        for p in shared:
            _accumulate(p, update[offset : offset + p.numel()].view_as(p) * factor)
            offset += p.numel()
        for p, g in zip(heads, grads[len(shared) :], strict=True):
            _accumulate(p, g.sum(0) / ctx.grad_accum)  # already scaled like the losses
        return {t: float(w) for t, w in zip(tasks, weights.tolist(), strict=True)}

    def _global_jacobian(self, jac: Tensor, tasks: list[str], ctx: StepContext) -> Tensor:
        """Average the stacked task gradients over ranks (rows of tasks absent on a rank are zero)."""
        index = torch.tensor(self._rows(tasks), device=jac.device)
        full = torch.zeros(len(self.tasks), jac.shape[1], device=jac.device, dtype=jac.dtype)
        full[index] = jac
        dist.all_reduce(full)
        return full[index] / ctx.env.world_size

    def task_gradients(self, losses: list[Tensor], inputs: list[nn.Parameter]) -> list[Tensor]:
        """``[K, *p.shape]`` gradients of each loss w.r.t. each input (zeros where unused)."""
        batched = self.engine == "batched" or (self.engine == "auto" and losses[0].device.type == "cuda")
        if batched and not self._batched_failed:
            try:
                eye = torch.eye(len(losses), device=losses[0].device, dtype=losses[0].dtype)
                grads = torch.autograd.grad(
                    torch.stack(losses), inputs, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
                return _filled(grads, inputs, len(losses))
            except RuntimeError as e:  # an op without a vmap batching rule: K plain backwards instead
                warnings.warn(f"batched task gradients unsupported ({e}); using one backward per task", stacklevel=2)
                self._batched_failed = True
        rows = []
        for i, loss in enumerate(losses):
            g = torch.autograd.grad(loss, inputs, retain_graph=i < len(losses) - 1, allow_unused=True)
            rows.append(_filled(g, inputs))
        return [torch.stack(per_input) for per_input in zip(*rows, strict=True)]


def _filled(grads: Sequence[Tensor | None], inputs: Sequence[Tensor], batch: int | None = None) -> list[Tensor]:
    """Zeros where autograd reports an input unused (a task that does not reach it)."""
    lead = () if batch is None else (batch,)
    return [g if g is not None else x.new_zeros(*lead, *x.shape) for g, x in zip(grads, inputs, strict=True)]


def _accumulate(p: nn.Parameter, grad: Tensor) -> None:
    grad = grad.to(p.dtype)
    if p.grad is None:
        p.grad = grad
    else:
        p.grad.add_(grad)


class GramianBalancer(GradientBalancer):
    """A method whose update is ``w^T J`` with weights ``w = weights(J J^T)``.

    Only the K x K Gramian reaches the method; the engine applies the weights (``rep``: one
    weighted backbone backward; ``params``: one K x P matrix-vector product).
    """

    def weights(self, gramian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        """K weights from the K x K Gramian (float64 on the CPU)."""
        raise NotImplementedError

    def aggregate(self, jacobian: Tensor, losses: Tensor | None = None, rows: Sequence[int] | None = None) -> Tensor:
        w = self._weights(jacobian @ jacobian.T, losses, rows)
        return w.to(jacobian.dtype) @ jacobian

    def _weights(self, gramian: Tensor, losses: Tensor | None, rows: Sequence[int] | None) -> Tensor:
        return self.weights(gramian.detach().double().cpu(), losses, rows).to(gramian.device)

    def _update(self, jac: Tensor, gramian: Tensor, tasks: list[str], ctx: StepContext) -> tuple[Tensor, Tensor]:
        w = self._weights(gramian, self._loss_vector(tasks, ctx), self._rows(tasks))
        return w.to(jac.dtype) @ jac, w


def rows_or_all(rows: Sequence[int] | None, k: int) -> list[int]:
    return list(rows) if rows is not None else list(range(k))


def need_losses(method: str, losses: Tensor | None) -> Tensor:
    if losses is None:
        raise ConfigError(f"{method} needs the task loss values: call aggregate(jacobian, losses=...)")
    return losses.double().cpu()


def grow(state: Tensor, size: int, fill: float) -> Tensor:
    """Pad a per-task state tensor along its first dimension to ``size`` rows."""
    if state.shape[0] >= size:
        return state
    grown = torch.full((size, *state.shape[1:]), fill, dtype=state.dtype, device=state.device)
    grown[: state.shape[0]] = state
    return grown
