"""Per-task evaluation, the model-selection score, and Δm against baselines.

Both average over tasks each task's change from a reference, signed so that positive is better, so
a regression target in large units weighs no more than an accuracy. Δm (reports, comparisons) is
the field's relative change. Model selection measures a bounded metric's change in units of its
span instead: relative to a first validation near 0 (NER F1, mAP, exact match early on), one task
would decide which checkpoint is kept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .data import Loading, Source, eval_loader, move
from .distributed import DistEnv, all_reduce_sum
from .errors import ConfigError
from .metrics import Sense
from .model import JointModel
from .tree import tree_map

Results = dict[str, dict[str, float]]


def _float(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() else t


def primary_metric(metrics: Mapping[str, float]) -> str:
    """A task's primary metric: its first one (``loss`` when it has no other)."""
    return next((m for m in metrics if m != "loss"), "loss")


@torch.no_grad()
def eval_outputs(
    model: JointModel,
    sources: Sequence[Source],
    loading: Loading,
    env: DistEnv = DistEnv(),
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    tasks: Sequence[str] | None = None,
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The one evaluation pass: per batch of this rank's shard of every source, the batch on
    ``env.device`` and the outputs of the ``tasks`` (default all) its source labels, the model in
    eval mode (its mode restored after), gradients off.

    Under ``autocast`` only the shared encoder runs in reduced precision: the task layers, and so
    metrics and losses, see float32 (bf16 keeps 8 bits of mantissa, so close logits would collapse
    into ties and distort ranking metrics such as AUROC or mAP).
    """
    wanted = set(tasks) if tasks is not None else set(model.tasks)
    was_training = model.training
    model.eval()
    try:
        for source in sources:
            present = [t for t in source.tasks if t in wanted]
            if not present:
                continue
            for batch in eval_loader(source, loading, env.rank, env.world_size):
                batch = move(batch, env.device)
                with autocast():
                    features = model.encode(batch[source.input_key])
                yield batch, model.decode(tree_map(_float, features), present)
    finally:
        model.train(was_training)


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
    scored over all of them together (batches from :func:`eval_outputs`).
    """
    wanted = list(tasks) if tasks is not None else list(model.tasks)
    metrics = {t: {k: m.to(env.device) for k, m in model.tasks[t].new_metrics().items()} for t in wanted}
    loss_sums = torch.zeros(len(wanted), 2, dtype=torch.float64, device=env.device)  # (sum, count)
    with torch.no_grad():
        for batch, outputs in eval_outputs(model, sources, loading, env, autocast, wanted):
            for t, output in outputs.items():
                task = model.tasks[t]
                target = batch[task.label_key]
                task.update_metrics(metrics[t], output, target)
                task.validate_target(target)
                total, count = task.masked_loss(output, target)
                loss_sums[wanted.index(t)] += torch.stack([total.double(), count.double()])
    all_reduce_sum(loss_sums, env)
    results: Results = {}
    for i, t in enumerate(wanted):
        if loss_sums[i, 1] == 0:
            continue  # no labelled sample of this task in these sources
        results[t] = {k: float(m.compute()) for k, m in metrics[t].items()}
        results[t]["loss"] = float(loss_sums[i, 0] / loss_sums[i, 1])
    return results


Senses = Mapping[str, Mapping[str, Sense]]


def metric_senses(model: JointModel) -> dict[str, dict[str, Sense]]:
    """Per task and metric (``loss`` included): its direction and span (``core.metrics.sense``)."""
    return {name: {**task.metric_senses(), "loss": Sense(False, None)} for name, task in model.tasks.items()}


def higher_is_better(model: JointModel) -> dict[str, dict[str, bool]]:
    return {t: {m: s.higher_is_better for m, s in v.items()} for t, v in metric_senses(model).items()}


def selection_score(results: Results, reference: Results, senses: Senses) -> float:
    """Model-selection score, in percent: per task, its primary metric's change from ``reference``
    (the first evaluation or declared baselines), signed so that positive is better, averaged.

    A bounded metric's change is counted in units of its span (accuracy, F1, AUROC, mAP: 1; a
    correlation: 2), so a task that starts near 0 weighs like any other and the ranking of
    checkpoints does not depend on the reference; an unbounded one's (MAE, loss) relative to the
    reference, absolute where that is exactly 0. Used for early stopping and the best checkpoints.
    """
    terms = []
    for task, ref in reference.items():
        metric = primary_metric(ref)
        if metric not in ref or metric not in results.get(task, {}):
            continue
        s, base = senses[task][metric], ref[metric]
        scale = s.span or (abs(base) if base != 0 else 1.0)
        terms.append((1 if s.higher_is_better else -1) * (results[task][metric] - base) / scale)
    if not terms:
        raise ValueError("no metric is shared between results and baselines")
    return 100.0 * sum(terms) / len(terms)


def monitored_value(results: Results, monitor: str, reference: Results, senses: Senses) -> float:
    """What model selection maximises: ``"score"`` (:func:`selection_score`) or one ``"task/metric"``,
    negated where lower is better."""
    if monitor == "score":
        return selection_score(results, reference, senses)
    task, _, metric = monitor.partition("/")
    if task not in results or metric not in results[task]:
        raise ConfigError(f"monitor '{monitor}' is not among the validation results {sorted(results)}")
    return results[task][metric] if senses[task][metric].higher_is_better else -results[task][metric]


def mean_results(runs: Sequence[Results]) -> Results:
    """Metric-wise mean over several runs' results (a common reference for ranking them)."""
    out: Results = {}
    for t in {t for r in runs for t in r}:
        present = [r[t] for r in runs if t in r]
        out[t] = {m: sum(p[m] for p in present) / len(present) for m in present[0]}
    return out


def delta_m(
    results: Results,
    baselines: Results,
    directions: Mapping[str, Mapping[str, bool]],
    zero_reference: str = "skip",
) -> float:
    """Average relative improvement over baselines, in percent (Maninis et al. 2019; LibMTL).

    ``Δm = 100/K * sum_k mean_{metrics m of k} (-1)^{l_m} (M_m - B_m) / B_m`` with l_m = 1 where
    lower is better. Only metrics present in both results and baselines count. A baseline of 0
    has no relative change: ``zero_reference="skip"`` leaves that metric out, ``"absolute"`` uses
    the absolute change instead (model selection must score every task).
    """
    per_task: list[float] = []
    for task, base in baselines.items():
        terms = [
            (1 if directions[task][m] else -1) * (results[task][m] - b) / (abs(b) if b != 0 else 1.0)
            for m, b in base.items()
            if task in results
            and m in results[task]
            and m in directions.get(task, {})
            and (b != 0 or zero_reference == "absolute")
        ]
        if terms:
            per_task.append(sum(terms) / len(terms))
    if not per_task:
        raise ValueError("no metric is shared between results and baselines")
    return 100.0 * sum(per_task) / len(per_task)
