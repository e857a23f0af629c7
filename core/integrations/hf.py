"""Gradient balancing in a Hugging Face ``transformers.Trainer`` (``pip install jointtrain[hf]``).

:class:`BalancedTrainer` is a ``Trainer`` whose training step runs a
:class:`core.balancing.LoopBalancer` where ``Trainer`` would call ``accelerator.backward(loss)``. The
model returns a mapping with its task losses under ``"losses"`` (a mapping or sequence of
scalars, or a 1-D tensor of per-sample losses) and, for space ``rep``, the shared representation
under ``"features"``; a ``"loss"`` entry (their sum, say) keeps ``Trainer.evaluate`` working.
Other models: override :meth:`BalancedTrainer.task_losses`::

    trainer = BalancedTrainer(
        model=model, args=TrainingArguments(...), train_dataset=data,
        balancer=LoopBalancer("upgrad", shared=model.encoder),
    )
    trainer.train()

The rest of ``Trainer``'s step is untouched: optimizer, scheduler, ``max_grad_norm`` clipping, the
fp16 ``GradScaler`` (the balancer takes the unscaled task losses and applies the scaler's factor
itself, so the scaler's unscale / skip-on-inf logic holds), bf16 autocast, logging. The
balancer's state is saved beside the optimizer's in each checkpoint and restored on
``train(resume_from_checkpoint=...)``.

Refused with a :class:`~core.errors.ConfigError`: ``gradient_accumulation_steps > 1`` (the
balanced update of an accumulated batch is not the sum of its micro-batches' balanced updates;
raise the batch size, or use jointtrain's own trainer, which balances the whole step), LOMO
optimizers (they update inside their own backward), several GPUs in one process
(``DataParallel``), distributed runs (DDP, FSDP, DeepSpeed: their gradient reduction hooks
would fire once per task backward), and methods that learn from the losses after the optimizer
step (``famo``: Trainer runs that step unseen).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import transformers
from accelerate.utils import DistributedType
from accelerate.utils.memory import clear_device_cache
from torch import Tensor, nn
from transformers.training_args import OptimizerNames

from ..balancing import LoopBalancer
from ..errors import ConfigError
from .support import check_balancer

#: the balancer's state inside a Trainer checkpoint folder
BALANCER_STATE = "balancer.pt"

Losses = Sequence[Tensor] | Mapping[str, Tensor] | Tensor


class BalancedTrainer(transformers.Trainer):
    """A ``transformers.Trainer`` that balances a multi-task model's losses; see the module docstring.

    Args:
        balancer: the method and the shared parameters it balances, e.g.
            ``LoopBalancer("upgrad", shared=model.encoder)``. A method with learned parameters
            (``uw``, ``imtl``) must be a submodule of the model (``model.balancer = ...``, with
            ``tasks=``), so that ``Trainer`` builds its optimizer over them.
        *args, **kwargs: as ``transformers.Trainer``.
    """

    def __init__(self, *args: Any, balancer: LoopBalancer, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.balancer = balancer
        check_balancer(balancer, "transformers.Trainer")
        trained = {id(p) for p in self.model.parameters()}
        if any(id(p) not in trained for p in balancer.parameters()):
            raise ConfigError(
                "this balancer learns parameters that the model does not hold, so Trainer's optimizer would never "
                "train them: make it a submodule of the model (model.balancer = LoopBalancer(..., tasks=[...]))"
            )
        if self.args.gradient_accumulation_steps > 1:
            raise ConfigError(
                f"BalancedTrainer does not support gradient_accumulation_steps={self.args.gradient_accumulation_steps}:"
                " the balanced update of an accumulated batch is not the sum of its micro-batches' updates; use a "
                "larger per_device_train_batch_size, or jointtrain's Trainer, which balances the whole step"
            )
        if self.args.optim in (OptimizerNames.LOMO, OptimizerNames.ADALOMO):
            raise ConfigError(
                f"BalancedTrainer cannot run optim='{self.args.optim.value}': LOMO updates the weights inside its own "
                "backward; use another optimizer (adamw_torch, sgd, ...)"
            )
        if self.args.n_gpu > 1:
            raise ConfigError(
                f"BalancedTrainer runs on one device, but this process sees {self.args.n_gpu} GPUs (DataParallel); "
                "set CUDA_VISIBLE_DEVICES to one GPU"
            )
        if self.accelerator.distributed_type != DistributedType.NO:
            raise ConfigError(
                f"BalancedTrainer runs in one process on one device, not {self.accelerator.distributed_type.value}: "
                "launch it without torchrun / accelerate launch, or use jointtrain's Trainer for DDP / FSDP"
            )

    def task_losses(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[Losses, Any]:
        """This batch's task losses and shared representation (``None`` for space ``params``).

        By default the model's output mapping holds them under ``"losses"`` and ``"features"``.
        """
        outputs = model(**inputs)
        if not isinstance(outputs, Mapping) or "losses" not in outputs:
            keys = ", ".join(outputs) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ConfigError(
                f"BalancedTrainer needs the model's task losses under 'losses' in its output, got {keys}; "
                "return them from forward() or override BalancedTrainer.task_losses"
            )
        return outputs["losses"], outputs.get("features")

    def training_step(
        self, model: nn.Module, inputs: dict[str, Tensor | Any], num_items_in_batch: Tensor | int | None = None
    ) -> Tensor:
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()  # schedule-free optimizers switch modes here, as in Trainer
        inputs = self._prepare_inputs(inputs)
        with self.compute_loss_context_manager():
            losses, features = self.task_losses(model, inputs)
        del inputs
        empty_every = self.args.torch_empty_cache_steps
        if empty_every is not None and self.state.global_step % empty_every == 0:
            clear_device_cache()  # as Trainer does before its backward
        self.balancer.backward(losses, features=features, scaler=self.accelerator.scaler)
        values = list(losses.values()) if isinstance(losses, Mapping) else list(losses)
        return torch.stack([v.detach().sum() for v in values]).sum()  # what Trainer logs as the loss

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:
            torch.save(self.balancer.state_dict(), os.path.join(output_dir, BALANCER_STATE))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        path = None if checkpoint is None else os.path.join(checkpoint, BALANCER_STATE)
        if path is not None and os.path.isfile(path):
            self.balancer.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
