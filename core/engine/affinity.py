"""Task affinity measured on a trained model: which task pairs help each other.

``lookahead_affinity``, a K x K matrix ``affinity[i][j]``: the inter-task affinity of Fifty et al.
(NeurIPS 2021, arXiv:2109.04617), ``Z[i][j] = 1 - L_j(theta - lr * grad_i) / L_j(theta)``: how much
one SGD step on task i's loss (shared parameters only) lowers task j's loss, averaged over a few
training batches. Positive = i helps j. Measured after training, in eval mode. The matrix read from
logged gradient cosines, and the groups an affinity suggests: ``core.reports.affinity``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data import Loading, Source, move, open_stream
from ..model import JointModel


def _task_losses(model: JointModel, sources: Sequence[Source], batches: Mapping[str, Any]) -> dict[str, Tensor]:
    """Each task's loss on this round's batches (mean over the sources that label it)."""
    losses: dict[str, list[Tensor]] = {}
    for source in sources:
        batch = batches[source.name]
        outputs = model(batch[source.input_key], source.tasks)
        for t in source.tasks:
            task = model.tasks[t]
            loss = task.loss(outputs[t], batch[task.label_key])
            if loss is not None:
                losses.setdefault(t, []).append(loss.float())
    return {t: torch.stack(v).mean() for t, v in losses.items()}


def lookahead_affinity(
    model: JointModel, sources: Sequence[Source], loading: Loading, batches: int = 4, lr: float = 0.01, seed: int = 0
) -> dict[str, Any]:
    """Look-ahead affinity on ``batches`` rounds of training batches (one batch per source per round).

    Returns ``{"method": "lookahead", "lr", "batches", "matrix": Z}`` with Z in percent.
    The model's weights are restored exactly; its train/eval mode too.
    """
    device = next(model.parameters()).device
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    streams = [open_stream(s, loading, seed) for s in sources]  # map-style or sharded
    tasks = list(model.tasks)
    sums = {i: {j: 0.0 for j in tasks} for i in tasks}
    counts = {i: {j: 0 for j in tasks} for i in tasks}
    was_training = model.training
    model.eval()  # no dropout: the loss change comes from the step alone
    try:
        for _ in range(batches):
            round_batches = {st.source.name: move(next(st), device) for st in streams}
            losses = _task_losses(model, sources, round_batches)
            grads = {
                i: torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True) for i, loss in losses.items()
            }
            before = {t: float(v.detach()) for t, v in losses.items()}
            saved = [p.detach().clone() for p in shared]
            for i, grad in grads.items():
                with torch.no_grad():
                    for p, g in zip(shared, grad, strict=True):
                        if g is not None:
                            p.sub_(lr * g)
                    after = {t: float(v) for t, v in _task_losses(model, sources, round_batches).items()}
                    for p, s in zip(shared, saved, strict=True):
                        p.copy_(s)
                for j, value in after.items():
                    if before[j] > 0:
                        sums[i][j] += 100.0 * (1.0 - value / before[j])
                        counts[i][j] += 1
    finally:
        model.train(was_training)
    matrix = {i: {j: sums[i][j] / counts[i][j] if counts[i][j] else float("nan") for j in tasks} for i in tasks}
    return {"method": "lookahead", "lr": lr, "batches": batches, "matrix": matrix}
