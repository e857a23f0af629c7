"""Task affinity: which task pairs help each other, and the task groups that suggests.

Two cheap measurements, both a K x K matrix ``affinity[i][j]``:

- ``cosine_affinity``: the mean pairwise cosine of task gradients that a gradient-space
  balancing method logged (``cos/<a>/<b>`` or ``cos/<a>|<b>`` keys of the train records).
- ``lookahead_affinity``: the inter-task affinity of Fifty et al. (NeurIPS 2021, arXiv:2109.04617),
  ``Z[i][j] = 1 - L_j(theta - lr * grad_i) / L_j(theta)``: how much one SGD step on task i's loss
  (shared parameters only) lowers task j's loss, averaged over a few training batches. Positive
  = i helps j. Measured here on a trained model, after training, in eval mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..data import Loading, Source, move, open_stream
from ..model import JointModel

Matrix = dict[str, dict[str, float]]


def parse_cosine_key(key: str, tasks: Sequence[str]) -> tuple[str, str] | None:
    """``cos/a/b`` or ``cos/a|b`` -> (a, b) when both are tasks (task names may contain '/')."""
    if not key.startswith("cos/"):
        return None
    body = key[4:]
    if "|" in body:
        a, _, b = body.partition("|")
        return (a, b) if a in tasks and b in tasks else None
    for i, ch in enumerate(body):
        if ch == "/" and body[:i] in tasks and body[i + 1 :] in tasks:
            return body[:i], body[i + 1 :]
    return None


def cosine_affinity(records: Iterable[Mapping[str, Any]], tasks: Sequence[str]) -> Matrix | None:
    """Mean logged gradient cosine per task pair (1 on the diagonal); None when nothing was logged."""
    sums: dict[tuple[str, str], list[float]] = {}
    for record in records:
        for key, value in record.items():
            pair = parse_cosine_key(key, tasks)
            if pair is not None and isinstance(value, (int, float)):
                sums.setdefault(pair, []).append(float(value))
    if not sums:
        return None
    matrix: Matrix = {a: {b: (1.0 if a == b else float("nan")) for b in tasks} for a in tasks}
    for (a, b), values in sums.items():
        matrix[a][b] = matrix[b][a] = sum(values) / len(values)
    return matrix


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


def suggest_groups(matrix: Matrix, threshold: float = 0.0) -> list[list[str]]:
    """Greedy agglomerative grouping: merge the two groups whose mean symmetric affinity across them
    is highest, while it exceeds ``threshold``. Tasks left alone are better trained apart."""
    tasks = list(matrix)

    def pair(a: str, b: str) -> float:
        values = [v for v in (matrix[a][b], matrix[b][a]) if v == v]  # NaN-free
        return sum(values) / len(values) if values else float("-inf")

    groups = [[t] for t in tasks]
    while len(groups) > 1:
        best, best_value = None, threshold
        for g, h in itertools.combinations(range(len(groups)), 2):
            value = sum(pair(a, b) for a in groups[g] for b in groups[h]) / (len(groups[g]) * len(groups[h]))
            if value > best_value:
                best, best_value = (g, h), value
        if best is None:
            break
        g, h = best
        groups[g] = groups[g] + groups[h]
        del groups[h]
    return groups
