"""Per-task autograd for gradient-space methods: task gradients, AMP, DDP, non-finite handling.

:class:`TaskAutograd` turns K losses into what a pure :class:`~.method.Method` needs and writes the
method's answer into ``.grad``. It needs no model: a :class:`Targets` names the shared parameters
(balanced), every other leaf to fill (the plain sum of gradients, as ``loss.backward()``), the
shared representation (space ``rep``) and the module whose layers it may hook. The trainer's
:class:`~.gradient.GradientBalancer` and the functional API (:mod:`.functional`) both build one.
Two spaces:

- ``rep``: gradients of each task loss w.r.t. the shared representation (MGDA-UB style). Each
  head is backpropagated alone (cheap). A weighting then backpropagates ``sum_k w_k L_k`` once
  into the shared parameters; an aggregator backpropagates its representation update. Needs all
  tasks on one input batch. Nested features (a pooled output computed from token states, timm
  stages computed from earlier stages) are reduced to the ones not computed from another, whose
  gradients already carry every head's signal; counting both would double the shared gradient.
- ``params``: exact gradients w.r.t. the shared parameters, one backward per task on the retained
  graph (``engine: loop`` / ``gramian``) or one ``torch.vmap``-ed backward (``batched``, opt-in:
  fewer, larger ops, faster on MLPs and small CNNs, slower where norm-layer and pooling backwards
  batch poorly: measured in docs/balancing.md). ``gramian`` (the ``auto`` choice for weightings)
  takes each shared layer's share of the K x K Gramian from its inputs and output gradients where
  that is cheaper (:mod:`.layers`: a CNN's last stages, MLPs on small batches; the task backwards
  then stop at those layers' outputs and their K weight gradients are never formed, one product
  gives the update), and keeps the other task gradients as K x n blocks of consecutive parameters
  (one copy of at most :data:`BLOCK` entries per task at a time), accumulating the Gramian block by
  block in float32 with a float64 retry on overflow and writing ``sum_k w_k g_k`` with one product
  per block: no weighted backward is needed. ``loop`` (the ``auto`` choice for aggregators)
  concatenates the K x P Jacobian. Heads always get the plain gradient of their own loss.

Both spaces end in one tail (:meth:`TaskAutograd._finish`): remember the Gramian, the non-finite
check, then a :class:`~.method.Weighting` gets the Gramian and an :class:`~.method.Aggregator` the
Jacobian (dispatch on the method's type).

Composition with a training loop, per call:
- AMP: task gradients are taken of the *scaled* losses, unscaled before the method sees them, and
  the update is re-scaled so the caller's ``scaler.unscale_`` holds.
- Non-finite task gradients: with an fp16 scaler, ``inf`` is written into a shared gradient so the
  scaler skips the step *and* lowers its scale; otherwise :class:`NonFiniteGradients` is raised.
- Gradient accumulation: the trainer calls once per step with the step's losses (each task's
  masked mean over every micro-batch), the micro-batches' graphs held, so the method sees the
  Jacobian of the step: the same as one batch of all the step's samples.
- DDP (losses already scaled so that averaging gradients over ranks gives the global mean; every
  rank receives the same tasks, those labelled somewhere in the step):
  ``rep`` all-reduces the K x K Gramian (ranks hold disjoint samples: the global Gramian is the sum
  of the local ones / R^2), every rank applies the same weights, and the caller's gradient
  averaging completes the update. ``params`` all-reduces the task gradients once, so every rank
  computes the same, already global, update: :attr:`TaskAutograd.synchronised` lists the
  parameters the caller must not average again.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.graph import GradientEdge

from ..distributed import DistEnv
from ..errors import ConfigError
from ..tree import tree_leaves
from .base import NonFiniteGradients
from .layers import (
    Layer,
    Prepared,
    Recorder,
    layer_gramian,
    plan,
    prepare,
    sample_gramian,
    sample_rows,
    weighted_gradients,
)
from .method import Aggregator, Method, Weighting

SPACES = ("rep", "params")
#: each engine and the methods it can run: the Gramian engine never forms the Jacobian
ENGINES: dict[str, type[Method]] = {"auto": Method, "gramian": Weighting, "loop": Method, "batched": Method}


def choose_engine(requested: str, method: Method) -> str:
    """The ``params`` engine for a method: ``auto`` is ``gramian`` for weightings, else ``loop``."""
    if requested not in ENGINES:
        raise ConfigError(f"unknown gradient engine '{requested}'; valid: {', '.join(ENGINES)}")
    if not isinstance(method, ENGINES[requested]):
        raise ConfigError(
            f"{type(method).__name__} needs the whole Jacobian, not only its Gramian; use engine 'loop' or 'auto'"
        )
    return {"auto": "gramian" if isinstance(method, Weighting) else "loop"}.get(requested, requested)


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


@dataclass(frozen=True)
class Targets:
    """What one call balances and writes, named explicitly: no model is needed."""

    #: the balanced parameters (each requiring grad), in a fixed order
    shared: list[nn.Parameter]
    #: every other leaf the losses reach (heads): the plain sum of its gradients, as ``loss.backward()``
    others: list[Tensor]
    #: space ``rep``: the shared representation (nested features are reduced to their roots)
    features: list[Tensor] = field(default_factory=list)
    scaler: torch.amp.GradScaler | None = None
    env: DistEnv = field(default_factory=DistEnv)
    #: the module whose shared layers :meth:`TaskAutograd.attach` hooks (``gramian`` engine); None: no hooks
    module: nn.Module | None = None
    #: the losses are per-sample losses of samples that never interact (dim 0 of every hooked call)
    independent: bool = False


@dataclass(frozen=True)
class Gathered:
    """One space's task gradients, ready for the tail: the global Gramian and how to write an answer."""

    gramian: Tensor  # K x K, float64, CPU
    weighted: Callable[[list[float]], None]  # writes sum_k w_k g_k (and the heads' gradients)
    jacobian: Callable[[], Tensor]  # the unscaled K x P Jacobian, for aggregators
    update: Callable[[Tensor], None]  # writes an aggregator's update (and the heads' gradients)


class TaskAutograd:
    """Runs one gradient-space method on one call's losses; see the module docstring.

    Args:
        space: ``rep`` or ``params``.
        engine: how ``params`` computes the task gradients (:func:`choose_engine`'s answer).
    """

    def __init__(self, space: str, engine: str) -> None:
        self.space, self.engine = space, engine
        self.batched_failed = False
        self.last_gramian: Tensor | None = None
        self.last_tasks: list[str] = []
        self.synchronised: list[nn.Parameter] = []
        self.recorder: Recorder | None = None
        self.last_activation_params = 0  # shared parameters whose Gramian share came from activations

    def backward(
        self, method: Method, losses: dict[str, Tensor], targets: Targets, values: Tensor, rows: list[int]
    ) -> dict[str, float]:
        """Write ``method``'s answer for ``losses`` into ``.grad``; return each task's applied weight.

        ``values``: the K detached loss values (float64, global under DDP) for methods that use them;
        ``rows``: each task's index in the method's per-task state.
        """
        if not targets.shared:
            raise ConfigError(f"{type(method).__name__}: no shared parameter requires grad; nothing to balance")
        self.synchronised = []
        tasks = list(losses)
        gather = {"rep": self._rep, "params": self._params}[self.space]
        return self._finish(method, tasks, gather(method, [losses[t] for t in tasks], targets), targets, values, rows)

    # -- the tail both spaces share ----------------------------------------------------------
    def _finish(
        self, method: Method, tasks: list[str], gathered: Gathered, targets: Targets, values: Tensor, rows: list[int]
    ) -> dict[str, float]:
        gramian = gathered.gramian
        self.last_gramian, self.last_tasks = gramian.detach().cpu(), list(tasks)
        if not bool(torch.isfinite(gramian.diagonal()).all()):  # a non-finite piece makes its diagonal entry so
            self.last_gramian = None
            self._nonfinite(gramian, tasks, targets)
            return {}
        if isinstance(method, Weighting):
            w = method.weights(gramian, values, rows).tolist()
            gathered.weighted(w)
            return dict(zip(tasks, w, strict=True))
        if not isinstance(method, Aggregator):
            raise TypeError(f"{type(method).__name__} is neither a Weighting nor an Aggregator")
        jac = gathered.jacobian()
        update = method.apply(jac, values, rows)
        gathered.update(update)
        return dict(zip(tasks, _applied(jac, update, gramian).tolist(), strict=True))

    @staticmethod
    def _nonfinite(gramian: Tensor, tasks: list[str], targets: Targets) -> None:
        """fp16: poison a gradient so the scaler skips the step and lowers its scale; else raise."""
        if targets.scaler is not None and targets.scaler.is_enabled():
            target = targets.shared[0]
            _accumulate(target, torch.full_like(target, float("inf")))
            return
        norms = gramian.diagonal().tolist()  # squared gradient norms: inf or nan where a task overflowed
        raise NonFiniteGradients({t: v for t, v in zip(tasks, norms, strict=True) if not math.isfinite(v)})

    # -- rep ---------------------------------------------------------------------------------
    def _rep(self, method: Method, losses: list[Tensor], targets: Targets) -> Gathered:
        every = feature_tensors(targets.features)
        if not every:
            raise ConfigError(
                f"{type(method).__name__} with space 'rep' needs the shared representation: pass features "
                "(the tensor(s) the task heads read, requiring grad), or use space 'params'"
            )
        z = root_features(every)
        if isinstance(method, Aggregator) and len(z) < len(every):
            raise ConfigError(
                f"{type(method).__name__} in space 'rep' cannot use nested features (one computed from another); "
                "use space 'params' or a Gramian-based method"
            )
        scale = _amp_scale(targets.scaler, z[0].device)
        rows = []
        for loss in losses:  # each head alone: cheap; the backbone graph is kept for the one backward below
            grads = torch.autograd.grad(loss * scale, z, retain_graph=True, allow_unused=True)
            rows.append(torch.cat([g.reshape(-1) for g in _filled(grads, z)]))
        jac = _as_float(torch.stack(rows)) / scale
        gramian = _gramian([jac])
        if targets.env.enabled:
            gramian = _global_gramian(gramian, targets.env)

        def heads() -> None:
            if targets.others:
                torch.autograd.backward(sum(losses) * scale, inputs=targets.others, retain_graph=True)  # type: ignore[arg-type]

        def weighted(w: list[float]) -> None:
            heads()
            total = sum(wk * loss for wk, loss in zip(w, losses, strict=True))
            torch.autograd.backward(total * scale, inputs=targets.shared)  # type: ignore[union-attr]

        def update(u: Tensor) -> None:
            heads()
            offset, vectors = 0, []
            for x in z:
                vectors.append((u[offset : offset + x.numel()] * scale).view_as(x).to(x.dtype))
                offset += x.numel()
            torch.autograd.backward(z, vectors, inputs=targets.shared)  # the one backbone backward

        return Gathered(gramian, weighted, lambda: jac, update)

    # -- params ------------------------------------------------------------------------------
    def _params(self, method: Method, losses: list[Tensor], targets: Targets) -> Gathered:
        shared, others = targets.shared, targets.others
        amp = targets.scaler is not None and targets.scaler.is_enabled()
        scale = _amp_scale(targets.scaler, shared[0].device)
        records = self._records(losses, targets)
        if targets.independent:
            fast = self._per_sample(losses, targets, records, scale if amp else 1.0)
            if fast is not None:
                return fast
        layers = plan(records, len(losses))
        self.last_activation_params = sum(p.numel() for layer in layers for p in layer.params)
        taken = {id(p) for layer in layers for p in layer.params}
        direct = [p for p in shared if id(p) not in taken]
        outputs = [y for layer in layers for y in layer.outputs]
        edges = [None] * (len(direct) + len(others)) + [e for layer in layers for e in layer.edges]
        scaled = [loss * scale if amp else loss for loss in losses]
        grads = self.task_gradients(scaled, direct + others + outputs, edges)
        prepared: list[Prepared] = []
        start = len(direct) + len(others)
        for layer in layers:  # the K task gradients of these layers are never formed
            calls = slice(start, start + len(layer.outputs))
            prepared.append(prepare(layer, [row[calls] for row in grads], scale if amp else 1.0))
            start = calls.stop
        for i, p in enumerate(others):  # a head is reached by its own task(s) only: the plain sum
            _accumulate(p, sum(row[len(direct) + i] for row in grads))  # type: ignore[arg-type]
        blocks = _blocks(grads, direct)
        del grads  # only the shared blocks stay alive
        for block in blocks:
            if amp:  # unscaled in place: the blocks are ours, so no second copy
                block.div_(scale)
            if targets.env.enabled:
                dist.all_reduce(block)
                block /= targets.env.world_size
        self.synchronised = shared if targets.env.enabled else []
        gramian = _gramian(blocks) + sum((layer_gramian(p).cpu() for p in prepared), torch.zeros(()))

        def weighted(w: list[float]) -> None:
            coef = [wk * float(scale) for wk in w]
            for layer in prepared:
                for p, g in zip(layer.layer.params, weighted_gradients(layer, coef), strict=True):
                    _accumulate(p, g)
            if blocks:
                combine = torch.tensor(coef, dtype=blocks[0].dtype, device=blocks[0].device)
                _write(direct, [combine @ block for block in blocks])

        def jacobian() -> Tensor:
            jac = blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)
            blocks.clear()  # the K x P Jacobian replaces them
            return jac

        def update(u: Tensor) -> None:
            _write(shared, [u * scale])

        return Gathered(gramian, weighted, jacobian, update)

    def attach(self, module: nn.Module, shared: Sequence[nn.Parameter]) -> None:
        """Hook the module's shared layers before its first forward (``gramian`` engine in ``params``
        space only: nothing else takes the records), so that every call, the first included, can
        take Gramian shares from activations."""
        if self.space == "params" and self.engine == "gramian" and not _compiled(module):
            if self.recorder is not None:
                self.recorder.remove()
            self.recorder = Recorder(module, [p for p in shared if p.requires_grad])

    def _records(self, losses: list[Tensor], targets: Targets) -> list[Layer]:
        """The hooked layers' calls these losses depend on (``gramian`` engine).

        None under DDP (the global Gramian needs cross-rank products of activations), nor on a
        compiled module (hooks added after ``torch.compile`` would break its graphs). A module
        first seen here (not attached before its forward) gets its hooks now: this call is all direct.
        """
        self.last_activation_params = 0
        module = targets.module
        if self.engine != "gramian" or module is None or _compiled(module):
            return []
        if self.recorder is None or self.recorder.model is not module:
            self.attach(module, targets.shared)
            return []
        records = self.recorder.take(losses)  # every call, so that records never pile up
        return [] if targets.env.enabled else records

    def _per_sample(
        self, losses: list[Tensor], targets: Targets, records: list[Layer], scale: Tensor | float
    ) -> Gathered | None:
        """Per-sample losses of independent samples: every shared layer's per-sample Gramian from one
        backward of their sum (:func:`~.layers.sample_rows`); the heads get that backward's gradients.
        None (exact per-sample backwards instead) unless the hooked layers hold every shared parameter
        with the samples along their calls' first dimension."""
        k = len(losses)
        # one backward serves every layer, whatever its positions: each picks its cheaper product later
        layers = [layer for layer in records if layer.intact() and all(y.shape[0] == k for y in layer.outputs)]
        covered = {id(p) for layer in layers for p in layer.params}
        if not layers or any(id(p) not in covered for p in targets.shared):
            return None
        outputs = [y for layer in layers for y in layer.outputs]
        inputs = [*targets.others, *outputs]
        at = [*targets.others, *(e for layer in layers for e in layer.edges)]
        grads = _filled(torch.autograd.grad(sum(losses) * scale, at, allow_unused=True), inputs)
        for p, g in zip(targets.others, grads[: len(targets.others)], strict=True):  # the plain sum
            _accumulate(p, g)
        parts, start = [], len(targets.others)
        for layer in layers:
            calls = slice(start, start + len(layer.outputs))
            parts.append(sample_rows(layer, grads[calls], k, scale))
            start = calls.stop
        del grads
        gramian = sum((sample_gramian(part, k).cpu() for part in parts), torch.zeros(k, k, dtype=torch.float64))
        self.last_activation_params = sum(p.numel() for p in targets.shared)

        def weighted(w: list[float]) -> None:
            coef = torch.tensor(w, dtype=torch.float64) * float(scale)
            for part in parts:
                for p, g in zip(part.layer.params, part.weighted(coef), strict=True):
                    _accumulate(p, g)

        return Gathered(gramian, weighted, _no_jacobian, _no_jacobian)

    def task_gradients(
        self, losses: list[Tensor], inputs: Sequence[Tensor], edges: Sequence[GradientEdge | None] = ()
    ) -> list[list[Tensor]]:
        """Per loss, its gradient w.r.t. each input (zeros where unused); where ``edges[i]`` is given,
        the gradient at that edge instead (a layer output's, from before an in-place change)."""
        if not losses:
            return []
        at = [e if e is not None else x for x, e in itertools.zip_longest(inputs, edges)]
        if self.engine == "batched" and not self.batched_failed:
            try:
                stacked_losses = torch.stack(losses)
                eye = torch.eye(len(losses), device=stacked_losses.device, dtype=stacked_losses.dtype)

                def vjp(v: Tensor) -> tuple[Tensor, ...]:
                    return torch.autograd.grad(
                        stacked_losses, at, v, retain_graph=True, allow_unused=True, materialize_grads=True
                    )

                stacked = torch.vmap(vjp)(eye)  # torch.func's vmap: batching rules for conv / norm backwards
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
            g = torch.autograd.grad(loss, at, retain_graph=i < len(losses) - 1, allow_unused=True)
            out.append(_filled(g, inputs))
        return out


def _amp_scale(scaler: torch.amp.GradScaler | None, device: torch.device) -> Tensor:
    if scaler is not None and scaler.is_enabled():
        return scaler.scale(torch.ones((), device=device))
    return torch.ones((), device=device)


def _global_gramian(gramian: Tensor, env: DistEnv) -> Tensor:
    full = gramian.to(env.device)
    dist.all_reduce(full)  # every rank holds the same tasks in the same order
    # each rank's losses carry a 1/R factor (their average is the global loss)
    return full.cpu() / env.world_size**2


def _no_jacobian(*_: Any) -> Any:
    raise TypeError("the per-sample Gramian path forms no Jacobian: only a Weighting runs on the gramian engine")


def _compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())


#: elements per task row of one Jacobian block: few products for small models, bounded copies for large ones
BLOCK = 1 << 22


def _blocks(grads: list[list[Tensor]], params: Sequence[Tensor], size: int = BLOCK) -> list[Tensor]:
    """The K x P Jacobian as K x n blocks of consecutive parameters (float32 or float64), ``grads[k][j]``
    (j < len(params)) being task k's gradient w.r.t. ``params[j]``. Each block is one concatenation;
    the pieces it copies are dropped from ``grads`` as it goes, so the copy costs one block at most."""
    blocks: list[Tensor] = []
    start = 0
    while start < len(params):
        stop, n = start, 0
        while stop < len(params) and (stop == start or n + params[stop].numel() <= size):
            n += params[stop].numel()
            stop += 1
        flat = [_as_float(row[j]).reshape(-1) for row in grads for j in range(start, stop)]
        blocks.append(torch.cat(flat).view(len(grads), n))
        for row in grads:
            row[start:stop] = [None] * (stop - start)  # type: ignore[list-item]
        start = stop
    return blocks


def _gramian(blocks: list[Tensor]) -> Tensor:
    """``J J^T`` in float64 from the Jacobian's blocks, float64 throughout if float32 overflows."""
    if not blocks:
        return torch.zeros((), dtype=torch.float64)
    gramian = sum((b @ b.T).double() for b in blocks)
    if not bool(torch.isfinite(gramian).all()):  # float32 overflow of huge but finite gradients
        gramian = sum(b.double() @ b.double().T for b in blocks)
    return gramian.cpu()  # type: ignore[union-attr]  # host sync: the method runs on the CPU


def _write(params: Sequence[Tensor], flats: list[Tensor]) -> None:
    """Add each parameter's slice of the flat vectors (the parameters in order, block after block,
    none split between two) into its ``.grad``."""
    rows = iter(flats)
    row, offset = next(rows), 0
    for p in params:
        n = p.numel()
        while offset + n > row.numel():  # this block is used up
            row, offset = next(rows), 0
        _accumulate(p, row[offset : offset + n].view_as(p))
        offset += n


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


def _accumulate(p: Tensor, grad: Tensor) -> None:
    grad = grad.to(p.dtype)
    if p.grad is None:
        p.grad = grad
    else:
        p.grad.add_(grad)
