"""The gradient engine: per-task gradients, AMP, DDP, non-finite handling and diagnostics.

It turns K task losses into what a pure :class:`~.method.Method` needs and writes the method's
answer into ``.grad``. Two spaces:

- ``rep``: gradients of each task loss w.r.t. the shared representation (MGDA-UB style). Each
  head is backpropagated alone (cheap). A weighting then backpropagates ``sum_k w_k L_k`` once
  into the shared parameters; an aggregator backpropagates its representation update. Needs all
  tasks on one input batch. Nested features (a pooled output computed from token states, timm
  stages computed from earlier stages) are reduced to the ones not computed from another, whose
  gradients already carry every head's signal; counting both would double the shared gradient.
- ``params``: exact gradients w.r.t. the shared parameters, one backward per task on the retained
  graph (``engine: loop`` / ``gramian``) or one vmapped backward (``batched``, opt-in: torch's
  legacy vmap falls back to a per-op loop for conv/norm/GELU/softmax backwards and was measured
  slower on the CPU). ``gramian`` (the ``auto`` choice for weightings) takes each shared layer's
  share of the K x K Gramian from its inputs and output gradients where that is cheaper
  (:mod:`.layers`: a CNN's last stages, MLPs on small batches; the task backwards then stop at
  those layers' outputs and their K weight gradients are never formed, one product gives the
  update), and keeps the other task gradients as per-parameter pieces, accumulating the Gramian
  piece by piece in float32 with a float64 retry on overflow and writing ``sum_k w_k g_k`` in
  place: the K x P Jacobian is never concatenated, and no weighted backward is needed. ``loop``
  (the ``auto`` choice for aggregators) concatenates the K x P Jacobian. Heads always get the
  plain gradient of their own loss.

Composition with the trainer, per micro-batch:
- AMP: task gradients are taken of the *scaled* losses, unscaled before the method sees them, and
  the update is re-scaled so the trainer's ``scaler.unscale_`` holds.
- Non-finite task gradients: with an fp16 scaler, ``inf`` is written into a shared gradient so the
  scaler skips the step *and* lowers its scale; otherwise :class:`NonFiniteGradients` is raised.
- Gradient accumulation: the trainer calls the engine once per step with the step's losses (each
  task's masked mean over every micro-batch), the micro-batches' graphs held, so the method sees
  the Jacobian of the step: the same as one batch of all the step's samples.
- DDP (losses already scaled so that averaging gradients over ranks gives the global mean; every
  rank receives the same tasks, those labelled somewhere in the step):
  ``rep`` all-reduces the K x K Gramian (ranks hold disjoint samples: the global Gramian is the sum
  of the local ones / R^2), every rank applies the same weights, and the trainer's gradient
  averaging completes the update. ``params`` all-reduces the task gradients once, so every rank
  computes the same, already global, update: :attr:`GradientEngine.synchronised` lists the
  parameters the trainer must not average again.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..errors import ConfigError
from ..tree import tree_leaves
from .base import NonFiniteGradients, StepContext
from .layers import Layer, Recorder, layer_gramian, plan, prepare, weighted_gradients
from .method import Method

SPACES = ("rep", "params")
ENGINES = ("auto", "gramian", "loop", "batched")


def choose_engine(requested: str, method: Method) -> str:
    """The ``params`` engine for a method: ``auto`` is ``gramian`` for weightings, else ``loop``."""
    if requested not in ENGINES:
        raise ConfigError(f"unknown gradient engine '{requested}'; valid: {', '.join(ENGINES)}")
    if requested == "auto":
        return "gramian" if method.kind == "weighting" else "loop"
    if requested == "gramian" and method.kind != "weighting":
        raise ConfigError(
            f"{type(method).__name__} needs the whole Jacobian, not only its Gramian; use engine 'loop' or 'auto'"
        )
    return requested


def feature_tensors(features: Any) -> list[Tensor]:
    """The floating tensors of a (nested) representation that carry gradient to the backbone."""
    return [t for t in tree_leaves(features) if t.requires_grad and t.is_floating_point()]


def root_features(tensors: list[Tensor]) -> list[Tensor]:
    """Drop every feature computed from another feature (walking its autograd graph back).

    The gradient w.r.t. an ancestor already includes the path through its descendants.
    """
    unique: dict[int, Tensor] = {}
    for t in tensors:
        unique.setdefault(id(t), t)
    nodes = {t.grad_fn: i for i, t in unique.items() if t.grad_fn is not None}
    roots = []
    for i, t in unique.items():
        if t.grad_fn is None or not _reaches(t.grad_fn, {n for n, j in nodes.items() if j != i}):
            roots.append(t)
    return roots


def _reaches(start: Any, targets: set[Any]) -> bool:
    if start in targets:  # the same node as another feature (a duplicate view): keep only one
        return True
    seen, stack = {start}, [start]
    while stack:
        for nxt, _ in stack.pop().next_functions:
            if nxt is None or nxt in seen:
                continue
            if nxt in targets:
                return True
            seen.add(nxt)
            stack.append(nxt)
    return False


def cosines(gramian: Tensor) -> Tensor:
    """Pairwise cosine similarities of the rows of J, from its Gramian."""
    norms = gramian.diagonal().clamp_min(0).sqrt()
    return gramian / (norms[:, None] * norms[None, :]).clamp_min(1e-30)


class GradientEngine:
    """Runs one gradient-space method on one micro-batch; see the module docstring."""

    def __init__(self, space: str, engine: str) -> None:
        self.space, self.engine = space, engine
        self.batched_failed = False
        self.last_gramian: Tensor | None = None
        self.last_tasks: list[str] = []
        self.synchronised: list[nn.Parameter] = []
        self.recorder: Recorder | None = None
        self.last_activation_params = 0  # shared parameters whose Gramian share came from activations

    # -- entry point -------------------------------------------------------------------------
    def backward(
        self, method: Method, losses: dict[str, Tensor], ctx: StepContext, known_tasks: list[str]
    ) -> dict[str, float]:
        if ctx.model is None:
            raise ConfigError(f"{type(method).__name__} needs the model in the step context")
        self.synchronised = []
        if self.space == "rep":
            return self._rep(method, losses, ctx, known_tasks)
        return self._params(method, losses, ctx, known_tasks)

    # -- shared helpers ----------------------------------------------------------------------
    @staticmethod
    def _amp_scale(ctx: StepContext, device: torch.device) -> Tensor:
        if ctx.scaler is not None and ctx.scaler.is_enabled():
            return ctx.scaler.scale(torch.ones((), device=device))
        return torch.ones((), device=device)

    @staticmethod
    def _head_params(model: nn.Module) -> list[nn.Parameter]:
        shared = {id(p) for p in model.shared_parameters()}  # type: ignore[operator]
        return [p for p in model.parameters() if p.requires_grad and id(p) not in shared]

    @staticmethod
    def _loss_vector(tasks: list[str], ctx: StepContext) -> Tensor:
        return torch.tensor([ctx.loss_values[t] for t in tasks], dtype=torch.float64)

    def _nonfinite(self, gramian: Tensor, tasks: list[str], ctx: StepContext, target: nn.Parameter) -> None:
        """fp16: poison a gradient so the scaler skips the step and lowers its scale; else raise."""
        if ctx.scaler is not None and ctx.scaler.is_enabled():
            _accumulate(target, torch.full_like(target, float("inf")))
            return
        norms = gramian.diagonal().tolist()  # squared gradient norms: inf or nan where a task overflowed
        raise NonFiniteGradients({t: v for t, v in zip(tasks, norms, strict=True) if not math.isfinite(v)})

    def _remember(self, gramian: Tensor, tasks: list[str]) -> None:
        self.last_gramian, self.last_tasks = gramian.detach().cpu(), list(tasks)

    # -- rep ---------------------------------------------------------------------------------
    def _rep(self, method: Method, losses: dict[str, Tensor], ctx: StepContext, known: list[str]) -> dict[str, float]:
        sources = [name for name in ctx.features if set(ctx.source_tasks.get(name, [])) & set(losses)]
        if len(sources) != 1:
            raise ConfigError(
                f"{type(method).__name__} with space 'rep' needs all tasks on one shared input batch, but this step "
                f"has {len(sources)} sources ({', '.join(sources)}); use space 'params' for one dataset per task"
            )
        every = feature_tensors(ctx.features[sources[0]])
        z = root_features(every)
        if method.kind == "aggregator" and len(z) < len(every):
            raise ConfigError(
                f"{type(method).__name__} in space 'rep' cannot use nested features (one computed from another); "
                "use space 'params' or a Gramian-based method"
            )
        tasks = list(losses)
        model: nn.Module = ctx.model  # type: ignore[assignment]
        scale = self._amp_scale(ctx, z[0].device)
        rows = []
        for t in tasks:  # each head alone: cheap; the backbone graph is kept for the one backward below
            grads = torch.autograd.grad(losses[t] * scale, z, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([g.reshape(-1) for g in _filled(grads, z)]))
        jac = torch.stack(rows).float() / scale
        gramian = _gramian([[r] for r in jac])
        if ctx.env.enabled:
            gramian = self._global_gramian(gramian, ctx)
        self._remember(gramian, tasks)
        if not bool(torch.isfinite(gramian.diagonal()).all()):
            self.last_gramian = None
            self._nonfinite(gramian, tasks, ctx, next(iter(model.shared_parameters())))  # type: ignore[operator]
            return {}
        values, index = self._loss_vector(tasks, ctx), [known.index(t) for t in tasks]
        heads = self._head_params(model)
        if heads:
            torch.autograd.backward(sum(losses.values()) * scale, inputs=heads, retain_graph=True)  # type: ignore[arg-type]
        if method.kind == "weighting":
            w = method.weights(gramian, values, index)  # type: ignore[attr-defined]
            shared = [p for p in model.shared_parameters() if p.requires_grad]  # type: ignore[operator]
            weighted = sum(float(wk) * losses[t] for wk, t in zip(w.tolist(), tasks, strict=True))
            torch.autograd.backward(weighted * scale, inputs=shared)  # type: ignore[union-attr]
            return dict(zip(tasks, w.tolist(), strict=True))
        update = method.apply(jac, values, index)  # type: ignore[attr-defined]
        offset, vectors = 0, []
        for x in z:
            vectors.append((update[offset : offset + x.numel()] * scale).view_as(x).to(x.dtype))
            offset += x.numel()
        torch.autograd.backward(z, vectors)  # the one backbone backward
        return dict(zip(tasks, _applied(jac, update, gramian).tolist(), strict=True))

    @staticmethod
    def _global_gramian(gramian: Tensor, ctx: StepContext) -> Tensor:
        full = gramian.to(ctx.env.device)
        dist.all_reduce(full)  # every rank holds the same tasks in the same order
        # each rank's losses carry a 1/R factor (their average is the global loss)
        return full.cpu() / ctx.env.world_size**2

    # -- params ------------------------------------------------------------------------------
    def _params(
        self, method: Method, losses: dict[str, Tensor], ctx: StepContext, known: list[str]
    ) -> dict[str, float]:
        model: nn.Module = ctx.model  # type: ignore[assignment]
        shared = [p for p in model.shared_parameters() if p.requires_grad]  # type: ignore[operator]
        heads = self._head_params(model)
        tasks = list(losses)
        amp = ctx.scaler is not None and ctx.scaler.is_enabled()
        scale = self._amp_scale(ctx, shared[0].device)
        layers = self._activation_layers(model, [losses[t] for t in tasks], ctx)
        taken = {id(p) for layer in layers for p in layer.params}
        direct = [p for p in shared if id(p) not in taken]
        outputs = [y for layer in layers for y in layer.outputs]
        grads = self.task_gradients([losses[t] * scale if amp else losses[t] for t in tasks], direct + heads + outputs)
        per_task = dict(zip(tasks, grads, strict=True))
        prepared, start = [], len(direct) + len(heads)
        for layer in layers:  # the K task gradients of these layers are never formed
            calls = slice(start, start + len(layer.outputs))
            prepared.append(prepare(layer, [per_task[t][calls] for t in tasks], scale if amp else 1.0))
            start = calls.stop
        # unscaled in place: autograd's outputs are ours, so no second copy of the K x P pieces
        pieces = [
            [_as_float(g).div_(scale) if amp else _as_float(g) for g in per_task[t][: len(direct)]] for t in tasks
        ]
        for i, p in enumerate(heads):  # a head is reached by its own task(s) only: the plain sum
            _accumulate(p, sum(per_task[t][len(direct) + i] for t in tasks))  # type: ignore[arg-type]
        del grads, per_task  # only the shared pieces stay alive
        if ctx.env.enabled:
            for row in pieces:
                for g in row:
                    dist.all_reduce(g)
                    g /= ctx.env.world_size
            self.synchronised = shared
        gramian = _gramian(pieces) + sum((layer_gramian(p).cpu() for p in prepared), torch.zeros(()))
        self._remember(gramian, tasks)
        if not bool(torch.isfinite(gramian.diagonal()).all()):  # a non-finite piece makes its diagonal entry so
            self.last_gramian = None
            self._nonfinite(gramian, tasks, ctx, shared[0])
            return {}
        values, index = self._loss_vector(tasks, ctx), [known.index(t) for t in tasks]
        if method.kind == "weighting":
            w = method.weights(gramian, values, index)  # type: ignore[attr-defined]
            coef = (w * float(scale)).tolist()
            for layer in prepared:
                for p, g in zip(layer.layer.params, weighted_gradients(layer, coef), strict=True):
                    _accumulate(p, g)
            for j, p in enumerate(direct):  # sum_k w_k g_k written in place into the first task's piece
                out = pieces[0][j].mul_(coef[0])
                for k in range(1, len(tasks)):
                    out.add_(pieces[k][j], alpha=coef[k])
                if out.untyped_storage().nbytes() != out.numel() * out.element_size():
                    out = out.clone()  # a view into the batched engine's [K, ...] output: do not keep it alive
                _accumulate(p, out)
            return dict(zip(tasks, w.tolist(), strict=True))
        dtype = pieces[0][0].dtype if pieces and pieces[0] else torch.float32
        jac = torch.empty(len(tasks), sum(p.numel() for p in shared), device=shared[0].device, dtype=dtype)
        for k in range(len(tasks)):  # fill the K x P Jacobian, releasing each task's pieces as it goes
            torch.cat([g.reshape(-1) for g in pieces[k]], out=jac[k])
            pieces[k] = []
        update = method.apply(jac, values, index)  # type: ignore[attr-defined]
        offset = 0
        for p in shared:
            _accumulate(p, update[offset : offset + p.numel()].view_as(p) * scale)
            offset += p.numel()
        return dict(zip(tasks, _applied(jac, update, gramian).tolist(), strict=True))

    def attach(self, model: nn.Module) -> None:
        """Hook the model's shared layers before its first forward (``gramian`` engine in ``params``
        space only: nothing else takes the records), so that every step, the first included, can
        take Gramian shares from activations."""
        if self.space == "params" and self.engine == "gramian" and not _compiled(model):
            if self.recorder is not None:
                self.recorder.remove()
            self.recorder = Recorder(model, [p for p in model.shared_parameters() if p.requires_grad])  # type: ignore[operator]

    def _activation_layers(self, model: nn.Module, losses: list[Tensor], ctx: StepContext) -> list[Layer]:
        """The ``gramian`` engine's layers whose Gramian share comes from activations this step.

        Not under DDP (the global Gramian needs cross-rank products of activations), nor on a
        compiled model (hooks added after ``torch.compile`` would break its graphs). A model
        first seen here (not given at setup) gets its hooks now: this step is all direct.
        """
        if self.engine != "gramian" or _compiled(model):
            return []
        if self.recorder is None or self.recorder.model is not model:
            self.attach(model)
            return []
        records = self.recorder.take(losses)  # every step, so that records never pile up
        layers = [] if ctx.env.enabled else plan(records, len(losses))
        self.last_activation_params = sum(p.numel() for layer in layers for p in layer.params)
        return layers

    def task_gradients(self, losses: list[Tensor], inputs: Sequence[Tensor]) -> list[list[Tensor]]:
        """Per loss, its gradient w.r.t. each input (zeros where unused)."""
        if not losses:
            return []
        if self.engine == "batched" and not self.batched_failed:
            try:
                eye = torch.eye(len(losses), device=losses[0].device, dtype=losses[0].dtype)
                grads = torch.autograd.grad(
                    torch.stack(losses), inputs, eye, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
                stacked = _filled(grads, inputs, len(losses))
                return [[g[k] for g in stacked] for k in range(len(losses))]
            except torch.OutOfMemoryError:
                raise  # memory is not a missing batching rule
            except RuntimeError as e:
                if "vmap" not in str(e).lower() and "batch" not in str(e).lower():
                    raise
                warnings.warn(f"batched task gradients unsupported ({e}); using one backward per task", stacklevel=2)
                self.batched_failed = True
        out = []
        for i, loss in enumerate(losses):
            g = torch.autograd.grad(loss, list(inputs), retain_graph=i < len(losses) - 1, allow_unused=True)
            out.append(_filled(g, inputs))
        return out


def _compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


def _gramian(pieces: list[list[Tensor]]) -> Tensor:
    """``J J^T`` in float64 from per-task lists of gradient pieces, one piece at a time."""
    k = len(pieces)
    gramian = torch.zeros(k, k, dtype=torch.float64)
    if k == 0 or not pieces[0]:
        return gramian
    acc = torch.zeros(k, k, dtype=torch.float64, device=pieces[0][0].device)
    for j in range(len(pieces[0])):
        block = torch.stack([row[j].reshape(-1) for row in pieces])
        part = block @ block.T
        if not bool(torch.isfinite(part).all()):  # float32 overflow of huge but finite gradients
            block = block.double()
            part = block @ block.T
        acc += part.double()
    return gramian + acc.cpu()  # host sync: the method runs on the CPU


def _applied(jac: Tensor, update: Tensor, gramian: Tensor) -> Tensor:
    """Per-task weight of an update that is not a plain combination: ``<u, g_k> / |g_k|^2``."""
    return (jac @ update).double().cpu() / gramian.diagonal().clamp_min(1e-30)


def _as_float(g: Tensor) -> Tensor:
    """Half-precision gradients in float32; float32 and float64 ones as they are."""
    return g if g.dtype in (torch.float32, torch.float64) else g.float()


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
