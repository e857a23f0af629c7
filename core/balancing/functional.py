"""Gradient balancing in your own training loop: one line instead of ``loss.backward()``.

``backward(losses, shared=model.backbone)`` runs any registered method (``upgrad`` by default) on
K losses and leaves ``.grad`` on the parameters as ``loss.backward()`` would (accumulating into an
existing ``.grad``): the shared parameters get the method's combination of the K task gradients,
every other leaf the losses reach (the heads) the plain sum of its gradients. :class:`LoopBalancer`
is the same with the method's state kept across steps (an ``nn.Module``: ``state_dict`` /
``load_state_dict``; learned method parameters, e.g. ``uw``'s, are its ``parameters()``).

Both go through the trainer's own path (the registry's :class:`~.base.Balancer` and
:class:`~.autograd.TaskAutograd`), so the spaces, engines, AMP, non-finite and DDP behaviour are the
trainer's:

- space ``rep`` when ``features`` (the shared representation the heads read) is given, else
  ``params`` (exact gradients w.r.t. the shared parameters).
- AMP: pass the ``GradScaler`` as ``scaler`` instead of calling ``scaler.scale(loss)``; the
  gradients are left scaled, so ``scaler.step(optimizer)`` / ``scaler.update()`` follow as usual.
- Non-finite task gradients: with an enabled scaler, ``inf`` goes into a shared gradient (the scaler
  skips the step and lowers its scale) and the returned weights are empty; otherwise
  :class:`~.base.NonFiniteGradients` is raised.
- DDP: do not wrap the model in ``DistributedDataParallel`` (or run forward and backward under its
  ``no_sync()``). With the process group initialised, give every rank an equal shard and its local
  mean losses, the same task keys on every rank; the call all-reduces what the method needs and
  leaves every gradient it wrote averaged over the ranks (identical everywhere).
- Per-sample objectives (instance-wise risk minimisation): pass the 1-D tensor of the batch's
  per-sample losses; K is the batch size. The ``params`` Gramian engine of a :class:`LoopBalancer`
  built on a module takes the Gramian share of its ``Linear`` / ``Conv2d`` layers from their inputs
  and output gradients (per-example inner products without per-example weight gradients, see
  :mod:`.layers`), which is cheaper than K weight gradients wherever a layer's positions per step
  are few against its weight's size: an MLP or a CNN's last stages on a small batch. With
  ``independent_samples=True`` (samples that never interact) and every shared parameter in such
  layers or in affine GroupNorm / InstanceNorm / LayerNorm layers, one backward of the summed
  losses replaces the K per-sample backwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..distributed import DistEnv, average_gradients
from ..errors import ConfigError, DataError
from ..registry import split_spec
from .base import Balancer, BalancerSetup, StepContext
from .gradient import GradientBalancer, GradientMethod
from .layers import graph_nodes

#: K scalar losses by name, K scalar losses in order, or a 1-D tensor of K losses (e.g. per sample)
Losses = Mapping[str, Tensor] | Sequence[Tensor] | Tensor
#: weights by task name for named losses, else a 1-D float64 tensor in the losses' order
Weights = dict[str, float] | Tensor


class LoopBalancer(nn.Module):
    """A balancing method for a hand-written loop, its state kept across steps.

    Args:
        method: a registry name (``jointtrain list``), gradient- or loss-space.
        shared: the shared parameters, or the module holding them. A module lets the ``params``
            Gramian engine hook its ``Linear`` / ``Conv2d`` layers now, before its first forward,
            so every step can take their Gramian share from activations.
        engine: how space ``params`` computes the task gradients: ``auto``, ``gramian``, ``loop``,
            ``batched`` (gradient-space methods only).
        space: ``rep`` or ``params``; None: ``rep`` on a call that passes ``features``, else ``params``.
        tasks: the task names (or their number, for positional losses) when known up front: methods
            with learned per-task parameters (``uw``, ``imtl``) create them here, so they exist when
            the optimizer is built and when a checkpoint is loaded. None: the first call's tasks.
        independent_samples: per-sample losses (a 1-D tensor) come from samples that never interact
            in the forward (no BatchNorm in training mode, no attention across the batch; samples
            along dim 0 of every layer call). When the hooked layers hold every shared parameter,
            the ``gramian`` engine then takes each layer's per-sample Gramian from one backward of
            the summed losses instead of K (torchjd's ``batch_dim=0``); otherwise it changes nothing.
            Wrong for a model whose samples interact: the Gramian would miss the cross terms.
        **method_kwargs: the method's hyperparameters.
    """

    def __init__(
        self,
        method: str = "upgrad",
        *,
        shared: nn.Module | Iterable[nn.Parameter],
        engine: str = "auto",
        space: str | None = None,
        tasks: Sequence[str] | int | None = None,
        independent_samples: bool = False,
        **method_kwargs: Any,
    ) -> None:
        super().__init__()
        from . import BALANCERS  # the registry imports this module

        name, given = split_spec(method, BALANCERS.kind)
        kwargs: dict[str, Any] = {**given, **method_kwargs}
        if isinstance(BALANCERS.get(name), GradientMethod):
            kwargs.update(engine=engine, space=space or "params")
        elif engine != "auto" or space is not None:
            raise ConfigError(f"'{name}' balances losses: engine and space apply to gradient-space methods only")
        self.balancer: Balancer = BALANCERS.build({"name": name, **kwargs})
        self.space, self.independent_samples = space, independent_samples
        module = shared if isinstance(shared, nn.Module) else None
        params = list(module.parameters() if module is not None else shared)
        if not params or not all(isinstance(p, Tensor) and p.is_leaf for p in params):
            raise ConfigError("shared: give the shared module or a non-empty iterable of its parameters")
        # kept outside the module tree: the model's parameters are not this object's state
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_shared", params)
        self.steps = 0
        self.ready = False  # set up with the task names (here, or at the first call)
        self.last_weights: Weights = {}
        if tasks is not None:
            self._setup([str(i) for i in range(tasks)] if isinstance(tasks, int) else list(tasks))
        elif self._grows():  # now, so that a module's layers are hooked before its first forward
            self._setup([])

    def _setup(self, tasks: list[str]) -> None:
        self.balancer.setup(
            BalancerSetup(
                tasks=tasks,
                task_weights=dict.fromkeys(tasks, 1.0),  # no per-task config weights here
                dataset_sizes={},
                steps_per_epoch=1,
                model=self._module,
                shared=self._shared,
            )
        )
        self.ready = True

    def backward(self, losses: Losses, features: Any = None, *, scaler: torch.amp.GradScaler | None = None) -> Weights:
        """Backpropagate the balanced combination of ``losses``; return the weight applied to each.

        ``features``: the shared representation (a tensor or a nested container of them) for space
        ``rep``. ``scaler``: an fp16 ``GradScaler`` (the losses are scaled here, not by you).
        """
        named, positional = _named(losses)
        env = _env()
        if env.enabled and isinstance(losses, Tensor):
            raise ConfigError(
                "per-sample losses under DDP: each rank's samples are different objectives; "
                "balance per-task losses across ranks, or per-sample losses in one process"
            )
        self._know(list(named))
        if isinstance(self.balancer, GradientBalancer):
            self.balancer.use_space(self.space or ("rep" if features is not None else "params"))
        shared_ids = {id(p) for p in self._shared}
        others = [t for t in _leaves(named.values()) if id(t) not in shared_ids]
        ctx = StepContext(
            step=self.steps,
            backward=lambda total: (scaler.scale(total) if scaler is not None else total).backward(),
            loss_values=_values(named, env),
            model=self._module,
            features={"features": features} if features is not None else {},
            source_tasks={"features": list(named)},
            env=env,
            scaler=scaler,
            shared=self._shared,
            others=others,
            independent_samples=self.independent_samples and isinstance(losses, Tensor),
        )
        applied = self.balancer.backward(dict(named), ctx)
        if env.enabled:  # complete the averaging a DDP wrapper would do, except what is already global
            synced = {id(p) for p in self.balancer.synchronised_parameters()}
            mine = [*self._shared, *others, *self.parameters()]  # the method's own learned weights too
            average_gradients([p for p in mine if id(p) not in synced], env)  # type: ignore[misc]
        self.steps += 1
        floats = {t: float(w) for t, w in applied.items()}  # host sync where a method keeps device weights
        self.last_weights = floats
        if positional:  # empty when the step is skipped for an fp16 overflow
            self.last_weights = torch.tensor([floats[t] for t in named if t in floats], dtype=torch.float64)
        return self.last_weights

    def after_step(self, recompute: Callable[[], Mapping[str, Tensor | float]]) -> None:
        """Call after ``optimizer.step()`` with a function that re-evaluates this step's losses on
        the same batch: methods that learn from the change (``famo``) need it; others ignore it."""
        self.balancer.after_step(lambda: {str(t): float(v) for t, v in recompute().items()})

    def get_extra_state(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])

    def diagnostics(self) -> dict[str, float]:
        """The method's extra scalars of the last call (gradient-space: pairwise task-gradient cosines)."""
        return self.balancer.diagnostics()

    def _know(self, tasks: list[str]) -> None:
        if not self.ready:
            self._setup(tasks)
            return
        new = [t for t in tasks if t not in self.balancer.tasks]
        if not new:
            return
        if not self._grows():
            raise ConfigError(
                f"tasks {new} were not among the tasks {self.balancer.tasks} this balancer was set up with; "
                "pass every task name as tasks=[...]"
            )
        self.balancer.tasks.extend(new)  # a row index for each new objective (e.g. a larger batch)

    def _grows(self) -> bool:
        """Whether new objectives can join after setup: a gradient method keeps no per-task parameters
        (its per-task state grows with the row index); learned loss weights or scales do."""
        return isinstance(self.balancer, GradientBalancer) and not self.balancer.loss_scales

    def extra_repr(self) -> str:
        return f"space={self.space!r}"


def backward(
    losses: Losses,
    *,
    shared: nn.Module | Iterable[nn.Parameter],
    features: Any = None,
    method: str = "upgrad",
    engine: str = "auto",
    scaler: torch.amp.GradScaler | None = None,
    **method_kwargs: Any,
) -> Weights:
    """``loss.backward()`` for K losses balanced by ``method``; see the module docstring.

    Stateless: a method with state across steps (EMAs, RNG, learned parameters) starts afresh at
    every call, and no layer is hooked (the forward already ran), so the ``params`` Gramian engine
    uses exact per-parameter gradients. Keep a :class:`LoopBalancer` for both.
    """
    params = list(shared.parameters()) if isinstance(shared, nn.Module) else list(shared)
    balancer = LoopBalancer(method, shared=params, engine=engine, **method_kwargs)
    return balancer.backward(losses, features, scaler=scaler)


def _named(losses: Losses) -> tuple[dict[str, Tensor], bool]:
    """The losses by name, and whether they came in order (named ``"0"``, ``"1"``, ...)."""
    if isinstance(losses, Tensor):
        if losses.ndim != 1:
            raise DataError(
                f"a tensor of losses must be 1-D (one loss per objective, e.g. per sample), got shape "
                f"{tuple(losses.shape)}; for one scalar loss call loss.backward()"
            )
        named, positional = {str(i): loss for i, loss in enumerate(losses.unbind())}, True
    elif isinstance(losses, Mapping):
        named, positional = {str(t): loss for t, loss in losses.items()}, False
    else:
        named, positional = {str(i): loss for i, loss in enumerate(losses)}, True
    if not named:
        raise DataError("no losses to balance: pass at least one")
    for t, loss in named.items():
        if not isinstance(loss, Tensor) or loss.ndim != 0:
            raise DataError(f"loss '{t}' must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        if not loss.requires_grad:
            raise DataError(f"loss '{t}' does not require grad: compute it from the model's outputs, outside no_grad")
    return named, positional


def _leaves(losses: Iterable[Tensor]) -> list[Tensor]:
    """The leaves the losses' graph reaches (what ``loss.backward()`` fills), in a stable order."""
    # an AccumulateGrad node holds its leaf
    return [node.variable for node in graph_nodes(losses) if getattr(node, "variable", None) is not None]


def _env() -> DistEnv:
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistEnv(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)


def _values(losses: dict[str, Tensor], env: DistEnv) -> dict[str, float]:
    """The detached loss values, averaged over ranks (the global mean of equal shards)."""
    values = torch.stack([loss.detach().double() for loss in losses.values()]).to(env.device)
    if env.enabled:
        dist.all_reduce(values)
        values /= env.world_size
    return dict(zip(losses, values.tolist(), strict=True))  # host sync: the methods read floats
