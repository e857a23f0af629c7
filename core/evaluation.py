"""Per-task evaluation, the aggregate model-selection score, and Δm against baselines."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .data import Loading, Source, eval_loader
from .distributed import DistEnv, all_reduce_sum
from .model import JointModel

Results = dict[str, dict[str, float]]


def move(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device) for v in batch)
    return batch


@torch.no_grad()
def evaluate(
    model: JointModel,
    sources: Sequence[Source],
    loading: Loading,
    env: DistEnv = DistEnv(),
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    tasks: Sequence[str] | None = None,
) -> Results:
    """Metrics of every task on every source that labels it, plus each task's mean ``loss``.

    Metrics are gathered across ranks by torchmetrics; a task labelled by several sources is
    scored over all of them together.
    """
    wanted = list(tasks) if tasks is not None else list(model.tasks)
    metrics = {t: {k: m.to(env.device) for k, m in model.tasks[t].new_metrics().items()} for t in wanted}
    loss_sums = torch.zeros(len(wanted), 2, dtype=torch.float64, device=env.device)  # (sum, count)
    was_training = model.training
    model.eval()
    try:
        for source in sources:
            present = [t for t in source.tasks if t in metrics]
            if not present:
                continue
            for batch in eval_loader(source, loading, env.rank, env.world_size):
                batch = move(batch, env.device)
                with autocast():
                    outputs = model(batch[source.input_key], present)
                for t in present:
                    task = model.tasks[t]
                    target = batch[task.label_key]
                    task.update_metrics(metrics[t], outputs[t], target)
                    _, _, count = task.labelled(outputs[t], target)
                    if count:
                        loss = task.loss(outputs[t], target)
                        loss_sums[wanted.index(t)] += torch.stack(
                            [loss.double() * count, torch.tensor(count, device=env.device, dtype=torch.float64)]
                        )
    finally:
        model.train(was_training)
    all_reduce_sum(loss_sums, env)
    results: Results = {}
    for i, t in enumerate(wanted):
        if loss_sums[i, 1] == 0:
            continue  # no labelled sample of this task in these sources
        results[t] = {k: float(m.compute()) for k, m in metrics[t].items()}
        results[t]["loss"] = float(loss_sums[i, 0] / loss_sums[i, 1])
    return results


def higher_is_better(model: JointModel) -> dict[str, dict[str, bool]]:
    return {name: {**task.higher_is_better(), "loss": False} for name, task in model.tasks.items()}


def aggregate_score(
    results: Results, primary: Mapping[str, str], directions: Mapping[str, Mapping[str, bool]]
) -> float:
    """Mean over tasks of each task's primary metric, negated where lower is better.

    Used for early stopping and best-checkpoint selection; ``monitor`` can pick one metric instead.
    """
    values = [results[t][m] if directions[t][m] else -results[t][m] for t, m in primary.items() if t in results]
    return sum(values) / len(values) if values else float("-inf")


def delta_m(results: Results, baselines: Results, directions: Mapping[str, Mapping[str, bool]]) -> float:
    """Average relative improvement over baselines, in percent (Maninis et al. 2019; LibMTL).

    ``Δm = 100/K * sum_k mean_{metrics m of k} (-1)^{l_m} (M_m - B_m) / B_m`` with l_m = 1 where
    lower is better. Only metrics present in both results and baselines count.
    """
    per_task: list[float] = []
    for task, base in baselines.items():
        terms = [
            (1 if directions[task][m] else -1) * (results[task][m] - b) / abs(b)
            for m, b in base.items()
            if task in results and m in results[task] and b != 0 and m in directions.get(task, {})
        ]
        if terms:
            per_task.append(sum(terms) / len(terms))
    if not per_task:
        raise ValueError("no metric is shared between results and baselines")
    return 100.0 * sum(per_task) / len(per_task)
