"""Gradient balancing in a Lightning ``LightningModule`` (``pip install jointtrain[lightning]``).

Subclass :class:`BalancedModule` instead of ``LightningModule``, keep a
:class:`~core.balancing.LoopBalancer` as ``self.balancer`` and return ``self.balance(losses)`` from
``training_step`` instead of their sum::

    class TwoTasks(BalancedModule):
        def __init__(self):
            super().__init__()
            self.backbone, self.head_a, self.head_b = ...
            self.balancer = LoopBalancer("upgrad", shared=self.backbone)

        def training_step(self, batch, batch_idx):
            x, y_a, y_b = batch
            h = self.backbone(x)
            return self.balance({"a": F.cross_entropy(self.head_a(h), y_a), "b": F.mse_loss(self.head_b(h), y_b)})

Automatic optimisation stays on: Lightning still runs the optimizer, scheduler, gradient clipping,
callbacks and the fp16 ``GradScaler``; only its ``loss.backward()`` (the ``backward`` hook) becomes
the balancer's backward. The balancer is a submodule, so its state is in Lightning checkpoints and
its learned parameters (``uw``, ``imtl``) in ``self.parameters()``; built in ``__init__``, it hooks
the shared layers before the first forward.

Supported: one device (CPU, one GPU), precision 32 / 64 / 16-true / bf16-true / 16-mixed /
bf16-mixed, automatic or manual optimisation (``self.manual_backward(self.balance(losses))``).
Refused with a :class:`~core.errors.ConfigError`: ``accumulate_grad_batches > 1`` (the balanced
update of an accumulated batch is not the sum of its micro-batches' balanced updates; raise the
batch size, or use jointtrain's own trainer, which balances the whole step) and multi-device
strategies (DDP, FSDP, DeepSpeed: Lightning's wrapper reduces gradients in hooks that the
balancer's per-task backwards would fire once per task), and methods that learn from the losses
after the optimizer step (``famo``: Lightning runs that step unseen).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.plugins.precision import DoublePrecision, HalfPrecision, MixedPrecision, Precision
from lightning.pytorch.strategies import SingleDeviceStrategy
from torch import Tensor

from ..balancing import LoopBalancer
from ..errors import ConfigError, DataError
from .support import check_balancer

#: precision plugins whose ``backward`` is a plain ``loss.backward()`` (after the scaler's scaling)
PRECISIONS = (Precision, DoublePrecision, HalfPrecision, MixedPrecision)

Losses = Sequence[Tensor] | Mapping[str, Tensor] | Tensor


class BalancedModule(pl.LightningModule):
    """A ``LightningModule`` whose backward runs ``self.balancer`` on the losses that
    ``training_step`` hands to :meth:`balance`; see the module docstring."""

    balancer: LoopBalancer  # set by the subclass's __init__

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pending: tuple[Losses, Any] | None = None  # this step's losses, until the backward hook

    def balance(self, losses: Losses, features: Any = None) -> Tensor:
        """Hand this step's task losses (and, for space ``rep``, the shared representation) to the
        backward hook; return their detached sum, for Lightning's loss and for logging."""
        if self._pending is not None:
            raise ConfigError("balance() was called twice in one training step; call it once with every task's loss")
        values = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
        if not values:
            raise DataError("balance() got no losses; pass the task losses of this step")
        self._pending = (losses, features)
        return torch.stack([v.detach().sum() for v in values]).sum()

    def on_fit_start(self) -> None:
        _check_supported(self.trainer)
        if not isinstance(getattr(self, "balancer", None), LoopBalancer):
            raise ConfigError(
                f"{type(self).__name__} has no balancer: set self.balancer = LoopBalancer(method, shared=...) "
                "in __init__"
            )
        check_balancer(self.balancer, "Lightning's training loop")

    def backward(self, loss: Tensor, *args: Any, **kwargs: Any) -> None:
        # ``loss`` is the detached sum from balance(), already scaled by Lightning: the balancer
        # takes the unscaled task losses and applies the fp16 scaler's factor itself
        if self._pending is None:
            raise ConfigError(
                f"{type(self).__name__}.training_step must return self.balance(losses), not a loss of its own"
            )
        losses, features = self._pending
        self._pending = None
        precision = self.trainer.precision_plugin
        scaler = precision.scaler if isinstance(precision, MixedPrecision) else None
        self.balancer.backward(losses, features=features, scaler=scaler)


def _check_supported(trainer: pl.Trainer) -> None:
    if trainer.accumulate_grad_batches > 1:
        raise ConfigError(
            f"BalancedModule does not support accumulate_grad_batches={trainer.accumulate_grad_batches}: the balanced "
            "update of an accumulated batch is not the sum of its micro-batches' updates; use a larger batch "
            "(accumulate_grad_batches=1), or jointtrain's Trainer, which balances the whole accumulated step"
        )
    if not isinstance(trainer.strategy, SingleDeviceStrategy):
        raise ConfigError(
            f"BalancedModule runs on one device, not with strategy {type(trainer.strategy).__name__}: "
            "use devices=1, or jointtrain's Trainer for DDP / FSDP"
        )
    if type(trainer.precision_plugin) not in PRECISIONS:
        raise ConfigError(
            f"BalancedModule does not support precision plugin {type(trainer.precision_plugin).__name__}; "
            "use precision 32, 64, 16-true, bf16-true, 16-mixed or bf16-mixed"
        )
