"""Confidence intervals of "row − reference" per task and for Δm: seeds × a paired bootstrap over test examples.

Two sources of doubt make a comparison of trained models uncertain: which seed a run had (init,
data order, dropout) and which examples the test set happened to hold. One replicate draws both:

1. the test examples, with replacement (the *same* draw for every row, so rows are compared on
   the same examples: a paired bootstrap, whose variance excludes the examples' own difficulty);
2. for each row, one of its seeds, with replacement (independently per row: seed ``k`` of one row
   has nothing in common with seed ``k`` of another beyond the integer);

and recomputes every metric with the task's own torchmetrics on that draw (AUROC, F1, mAP are not
means over examples, so they are recomputed, not averaged). Δm's relative changes are divided by
the reference's whole-test-set values, not the draw's (``delta_m_on_scale``). The interval is the percentile
interval of the replicates' differences; ``p_better`` the share of replicates where the row wins.
With one seed the interval covers the test examples only, and says so (``seeds``).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..evaluation import Results, delta_m, mean_results, primary_metric
from .predictions import TaskPredictions, example_counts

#: one row: per seed, task -> its test predictions (a row of several runs per seed merges them)
Row = Sequence[Mapping[str, TaskPredictions]]


def score(seed: Mapping[str, TaskPredictions], counts: Mapping[str, np.ndarray] | None = None) -> Results:
    return {t: p.score(counts) for t, p in seed.items()}


def oriented_difference(row: Results, reference: Results, hib: Mapping[str, Mapping[str, bool]]) -> dict[str, float]:
    """Per task shared by both: the primary metric's ``row − reference``, signed so positive is better."""
    out = {}
    for t, ref in reference.items():
        if t in row:
            m = primary_metric(ref)
            out[t] = (1.0 if hib[t][m] else -1.0) * (row[t][m] - ref[m])
    return out


def delta_m_on_scale(row: Results, reference: Results, scale: Results, hib: Mapping[str, Mapping[str, bool]]) -> float:
    """Δm of ``row`` against ``reference`` with every relative change divided by ``scale`` (the
    reference's whole-test-set value) instead of the draw's own: a draw that holds no positive of a
    rare task, or an ECE near 0, would otherwise divide by ~0. On the whole test set it is Δm."""
    per_task = []
    for t, ref in reference.items():
        terms = [
            (1.0 if hib[t][m] else -1.0) * (row[t][m] - b) / abs(scale[t][m])
            for m, b in ref.items()
            if t in row and m in row[t] and m in hib.get(t, {}) and scale[t][m] != 0
        ]
        if terms:
            per_task.append(sum(terms) / len(terms))
    return 100.0 * sum(per_task) / len(per_task)


def interval(values: Sequence[float], confidence: float) -> dict[str, float]:
    arr = np.asarray(values, dtype=float)
    alpha = (1.0 - confidence) / 2
    return {
        "low": float(np.quantile(arr, alpha)),
        "high": float(np.quantile(arr, 1 - alpha)),
        "p_better": float((arr > 0).mean()),
    }


def paired_bootstrap(
    rows: Mapping[str, Row],
    reference: str,
    hib: Mapping[str, Mapping[str, bool]],
    replicates: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Per row other than ``reference``: per task (primary metric, positive = row better) and for Δm
    (%, against the reference), the point estimate (difference of the seed means on the whole test
    set) and its ``confidence`` interval over ``replicates`` draws of seeds × test examples."""
    rng = np.random.default_rng(seed)
    sizes = example_counts([s for row in rows.values() for s in row])
    full = {label: mean_results([score(s) for s in row]) for label, row in rows.items()}
    draws: dict[str, dict[str, list[float]]] = {label: {} for label in rows if label != reference}
    with warnings.catch_warnings():  # a draw without a rare task's positives: torchmetrics warns each time
        warnings.filterwarnings("ignore", "No positive samples", UserWarning)
        for _ in range(replicates):
            counts = {src: rng.multinomial(n, np.full(n, 1.0 / n)) for src, n in sizes.items()}
            scored = {label: score(row[rng.integers(len(row))], counts) for label, row in rows.items()}
            ref = scored[reference]
            for label, into in draws.items():
                for t, d in oriented_difference(scored[label], ref, hib).items():
                    into.setdefault(t, []).append(d)
                into.setdefault("delta_m", []).append(delta_m_on_scale(scored[label], ref, full[reference], hib))
    out: dict[str, dict[str, Any]] = {}
    for label, into in draws.items():
        estimate = oriented_difference(full[label], full[reference], hib)
        tasks = {
            t: {"metric": primary_metric(full[reference][t]), "estimate": estimate[t], **interval(into[t], confidence)}
            for t in estimate
        }
        dm = {"estimate": delta_m(full[label], full[reference], hib), **interval(into["delta_m"], confidence)}
        out[label] = {"tasks": tasks, "delta_m": dm, "seeds": len(rows[label]), "reference_seeds": len(rows[reference])}
    return out


def call(result: Mapping[str, float]) -> str:
    """``better`` / ``worse`` when the interval excludes 0 on that side, else ``no detectable difference``."""
    if result["low"] > 0:
        return "better"
    if result["high"] < 0:
        return "worse"
    return "no detectable difference"
