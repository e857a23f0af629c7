"""The definition of one optimizer step, as slow and obviously correct code: no shortcut, no device trick.

One step is every micro-batch of every rank at once, in one process:

1. each task's loss is its mean over every labelled sample of the step (all micro-batches, all
   ranks, all sources): the labelled entries are *selected*, their losses summed and divided by
   their count; a task with no labelled sample anywhere has no loss;
2. if any loss is NaN / Inf the step is skipped exactly: no parameter, moment or step count moves;
   the schedule still advances (it counts loop steps);
3. otherwise the balancer combines the losses: a loss-space balancer backpropagates its combination
   of these losses; a gradient-space method gets the Jacobian of these losses (w.r.t. the shared
   parameters, or the shared representation of every sample of the step for ``rep``) from one
   plain backward per task, and the shared gradient is its weighted sum (weighting) or its update
   (aggregator); every head gets the plain gradient of the sum of the losses. Tasks with no loss
   get no gradient at all;
4. the optimizer steps (a plain, non-fused ``torch.optim`` one), then the schedule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from core.balancing import StepContext
from core.balancing.gradient import GradientBalancer
from core.balancing.method import Weighting


def step_losses(model: Any, micro_batches: list[dict[str, Any]], sources: dict[str, Any]) -> tuple[dict, list]:
    """Each task's global masked mean over ``micro_batches`` (every rank's), and the features."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    features = []
    for batches in micro_batches:
        for name, batch in batches.items():
            source = sources[name]
            z = model.encode(batch[source.input_key])
            features.append(z)
            outputs = model.decode(z, source.tasks)
            for t in source.tasks:
                task = model.tasks[t]
                output, target, count = task.labelled(outputs[t], batch[task.label_key])
                if count:
                    loss = task.loss_fn(output, task.loss_target(target), reduction="sum")
                    sums[t] = sums.get(t, 0.0) + loss
                    counts[t] = counts.get(t, 0) + count
    return {t: sums[t] / counts[t] for t in sums}, features


def reference_step(
    step: int,
    model: Any,
    balancer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    micro_batches: list[dict[str, Any]],
    sources: dict[str, Any],
) -> None:
    optimizer.zero_grad(set_to_none=True)
    losses, features = step_losses(model, micro_batches, sources)
    if not losses or not all(math.isfinite(float(v)) for v in losses.values()):
        scheduler.step()
        return
    if isinstance(balancer, GradientBalancer):
        _gradient_step(model, balancer, losses, features)
    else:
        ctx = StepContext(
            step=step,
            backward=lambda total: total.backward(),
            loss_values={t: float(v) for t, v in losses.items()},
            model=model,
        )
        balancer.backward(losses, ctx)
    optimizer.step()
    scheduler.step()


def _gradient_step(model: Any, balancer: GradientBalancer, losses: dict[str, Tensor], features: list[Tensor]) -> None:
    tasks = list(losses)
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    shared_ids = {id(p) for p in shared}
    heads = [p for p in model.parameters() if p.requires_grad and id(p) not in shared_ids]
    inputs = features if balancer.grad_space == "rep" else shared
    rows = []
    for t in tasks:
        grads = torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [(torch.zeros_like(x) if g is None else g).reshape(-1) for g, x in zip(grads, inputs, strict=True)]
            )
        )
    jac = torch.stack(rows)
    values = torch.tensor([float(losses[t]) for t in tasks], dtype=torch.float64)
    index = [balancer.tasks.index(t) for t in tasks]
    method = balancer.method
    if isinstance(method, Weighting):
        w = method.weights((jac @ jac.T).double(), values, index).to(jac.dtype)
        update = w @ jac
    else:
        update = method.apply(jac, values, index).to(jac.dtype)
    if balancer.grad_space == "rep":
        shared_grads = torch.autograd.grad(
            features, shared, _split(update, features), retain_graph=True, allow_unused=True
        )
    else:
        shared_grads = _split(update, shared)
    for p, g in zip(shared, shared_grads, strict=True):
        p.grad = None if g is None else g.detach().clone()
    head_grads = torch.autograd.grad(sum(losses.values()), heads, allow_unused=True)
    for p, g in zip(heads, head_grads, strict=True):
        p.grad = g  # None for the heads of tasks without a loss


def _split(vector: Tensor, like: list[Tensor]) -> list[Tensor]:
    out, offset = [], 0
    for x in like:
        out.append(vector[offset : offset + x.numel()].view_as(x))
        offset += x.numel()
    return out
