"""The balancing contract: K task losses in, one backward pass (or gradient update) out.

A balancer is an ``nn.Module`` so learned weights are parameters and everything else it keeps
(loss history, RNG) is explicit state in ``state_dict`` (via ``get_extra_state``), which the
trainer checkpoints. The trainer only talks to this interface; it never compares method names.

Two kinds:
- ``loss``: weights (or a function) of the task losses; one ordinary backward of their combination.
  The losses arrive scaled for DDP (averaging gradients over ranks gives the global masked mean),
  so a method uses them only linearly and takes any non-linear coefficient from the detached,
  rank-averaged ``ctx.loss_values`` (exact under DDP, identical in one process). A method that
  computes its weights as device tensors (``host_values = False``) keeps the step free of host
  syncs. Either way it receives the tasks with a label somewhere in the step, each loss the
  step's global masked mean (core.engine.losses).
- ``gradient``: a pure method on the per-task gradients, run by :mod:`.autograd`
  (see :class:`.gradient.GradientBalancer`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..distributed import DistEnv


@dataclass(frozen=True)
class BalancerSetup:
    """What a balancer may know before training starts."""

    tasks: list[str]
    task_weights: dict[str, float]  # static weights from the task configs
    dataset_sizes: dict[str, int]  # labelled training examples per task
    steps_per_epoch: int
    #: the model to be trained (hooks that observe its forward go on before the first step)
    model: nn.Module | None = None
    #: the balanced parameters; None: ``model.shared_parameters()``
    shared: list[nn.Parameter] | None = None


@dataclass
class StepContext:
    """What the trainer offers a balancer for one (micro-)step."""

    step: int
    backward: Callable[[Tensor], None]  # AMP-scaled, accumulation-aware backward of a scalar
    #: detached step losses of the labelled tasks, global over ranks and micro-batches: use these for
    #: state updates. Host floats for a ``host_values`` balancer, 0-dim device tensors otherwise, and
    #: none for an ``accumulates_linearly`` one (it is called before the step's losses are known)
    loss_values: Mapping[str, float | Tensor]
    model: nn.Module | None = None
    #: source -> shared representation (a list of the micro-batches' when the step accumulates)
    features: dict[str, Any] = field(default_factory=dict)
    source_tasks: dict[str, list[str]] = field(default_factory=dict)  # source -> tasks computed on it
    env: DistEnv = field(default_factory=DistEnv)  # rank / world size / device
    scaler: torch.amp.GradScaler | None = None  # the trainer's AMP scaler (enabled only for fp16)
    #: the balanced parameters; None: ``model.shared_parameters()``
    shared: list[nn.Parameter] | None = None
    #: every other leaf to fill with the plain sum of gradients; None: the model's other parameters
    others: list[Tensor] | None = None
    #: the losses are per-sample losses of samples that never interact in the forward
    independent_samples: bool = False


class Balancer(nn.Module):
    """Base class; subclasses declare their kind and cost and implement :meth:`backward`.

    The declarations (``kind``, ``cost``, ``randomized``, ``state``, ``ddp``) are what
    ``jointtrain list`` prints, through :meth:`describe`.
    """

    #: ``loss`` (weights or a function of the task losses) or ``gradient`` (of the task gradients)
    kind: ClassVar[str]
    #: extra backward passes / memory, for ``jointtrain list`` and the docs
    cost: ClassVar[str] = "none"
    randomized: ClassVar[bool] = False
    #: the explicit state kept between steps ("" = none)
    state: ClassVar[str] = ""
    #: how the method behaves under DDP
    ddp: ClassVar[str] = "exact: the combined loss is linear in the DDP-scaled task losses"
    #: reads ``ctx.loss_values`` as host floats: the trainer then reads the step's loss table back
    #: (one host sync); False = weights stay device tensors
    host_values: ClassVar[bool] = True
    #: the backward is linear in the losses with coefficients this step's losses do not change, so
    #: the trainer may call it once per accumulation micro-batch (holding one micro-batch's graph);
    #: otherwise it is called once per step, every micro-batch's graph held until then
    accumulates_linearly: ClassVar[bool] = False

    @classmethod
    def describe(cls) -> dict[str, Any]:
        return {
            "kind": cls.kind,
            "spaces": ["loss"],
            "cost": cls.cost,
            "randomized": cls.randomized,
            "state": cls.state,
            "ddp": cls.ddp,
        }

    def setup(self, setup: BalancerSetup) -> None:
        """Called once by the trainer before the first step (and before loading a checkpoint)."""
        self.tasks = list(setup.tasks)

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float | Tensor]:
        """Backpropagate the combination of ``losses``; return the weight applied to each task
        (a device tensor where reading it would cost a host sync; the trainer logs it at log steps)."""
        raise NotImplementedError

    def synchronised_parameters(self) -> list[nn.Parameter]:
        """Parameters whose ``.grad`` the last :meth:`backward` already made global (identical on all
        ranks); the trainer averages every other parameter's gradient, not these."""
        return []

    def diagnostics(self) -> dict[str, float]:
        """Extra scalars for the step record (e.g. task-gradient cosines); read after ``backward``."""
        return {}

    def after_step(self, recompute_losses: Callable[[], dict[str, float]]) -> None:
        """Hook after the optimizer step; ``recompute_losses`` re-evaluates the step's losses."""

    def get_extra_state(self) -> dict[str, Any]:
        return {}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        pass


class NonFiniteGradients(ArithmeticError):
    """A task gradient is NaN/Inf; the trainer skips the step (``max_nonfinite_steps``)."""

    def __init__(self, values: dict[str, float]) -> None:
        super().__init__(f"non-finite task gradients: {values}")
        self.values = values


class LossBalancer(Balancer):
    """Loss-space methods: ``total = sum_k w_k * L_k`` unless :meth:`combine` says otherwise."""

    kind: ClassVar[str] = "loss"

    def weights(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, Tensor | float]:
        raise NotImplementedError

    def combine(self, losses: dict[str, Tensor], ctx: StepContext) -> tuple[Tensor, dict[str, float | Tensor]]:
        weights = self.weights(losses, ctx)
        total = sum(weights[t] * losses[t] for t in losses)
        return total, {t: weights[t] for t in losses}  # type: ignore[return-value]

    def backward(self, losses: dict[str, Tensor], ctx: StepContext) -> dict[str, float | Tensor]:
        total, applied = self.combine(losses, ctx)
        ctx.backward(total)
        return applied


def normalise(raw: dict[str, float]) -> dict[str, float]:
    """Rescale positive weights to sum to K, so the loss scale matches equal weighting."""
    total = sum(raw.values())
    return {t: len(raw) * w / total for t, w in raw.items()}
