"""``jointtrain verdict``: train together, in groups, or apart? With confidence and cost.

Builds on ``jointtrain compare`` (same config, same ``compare:`` section, same run directories,
so a finished comparison is reused): each task alone, joint training with each method of
``compare.methods``, variants and architectures, over seeds and budgets. Then:

1. task groups: the look-ahead affinity the joint runs of the first method measured picks the
   best partitions into 2 and 3 groups (``groups``); each multi-task group is trained as a joint
   run with the first method and the joint run's steps, its lone tasks reuse the single-task runs;
2. per-example test predictions of every run (``predictions``), and per row the interval of
   ``row − each task alone`` per task and for Δm (``intervals``: seeds × paired test bootstrap);
3. serving cost (``cost``): parameters and measured per-example latency of the models a row needs;
4. the decision: the row chosen on validation Δm (never on test), called by its test interval.

Everything goes in ``output_dir/verdict/`` (``results.json``, ``report.md``, ``plots/``). Runs
that finished are reused and interrupted ones resumed, so rerunning the command continues.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import RunConfig, apply_overrides, load_config, read_yaml
from ..distributed import resolve_device
from ..errors import ConfigError
from ..io import atomic_write_json
from ..spec import from_dict
from .builder import Experiment
from .compare import (
    CompareSpec,
    Run,
    as_spec,
    budget_steps,
    check_reusable,
    dir_name,
    execute,
    finished,
    method_label,
    plan,
    summarise,
    validate,
)
from .compare_report import SINGLE
from .cost import serving_cost
from .front import FrontSpec, plan_front, trade_off_front
from .groups import best_partitions, group_label, mean_affinity
from .intervals import call, paired_bootstrap
from .merged import MergeSpec, merged_baseline
from .merged import validate as validate_merge
from .predictions import TaskPredictions, predictions


@dataclass
class VerdictSpec:
    """The ``verdict:`` section of a config (the rows themselves come from ``compare:``)."""

    replicates: int = 200  # bootstrap draws of (seed, test examples); each draw rescores every row
    confidence: float = 0.95  # two-sided level of every interval
    groups: list[int] = field(default_factory=lambda: [2, 3])  # group counts to train as rows; [] = none
    latency_examples: int = 32  # single-example forwards timed per model (median)
    front: bool = True  # the fixed-weight trade-off front (its ``front:`` section: points, LR search)
    #: the merged-model baseline (its ``merge:`` section); meaningful where every single-task run starts
    #: from one pretrained backbone (the NLP demo's MiniLM), so off unless asked for
    merge: bool = False


@dataclass
class Study:
    """Everything a verdict reads from its config: the base run and each part's section."""

    base: RunConfig
    compare: CompareSpec
    verdict: VerdictSpec
    front: FrontSpec
    merge: MergeSpec


def read_verdict_config(path: str | Path, overrides: Sequence[str] = (), seeds: int | None = None) -> Study:
    raw = apply_overrides(read_yaml(path), overrides)
    cspec: CompareSpec = from_dict(CompareSpec, raw.pop("compare", None) or {}, "compare")
    vspec: VerdictSpec = from_dict(VerdictSpec, raw.pop("verdict", None) or {}, "verdict")
    fspec: FrontSpec = from_dict(FrontSpec, raw.pop("front", None) or {}, "front")
    mspec: MergeSpec = from_dict(MergeSpec, raw.pop("merge", None) or {}, "merge")
    raw.pop("tune", None)  # a config may carry a tune: section for another verb
    if seeds is not None:
        cspec.seeds = seeds
    base = load_config(raw=raw)
    validate(base, cspec, path)
    if not cspec.single_task:
        raise ConfigError(f"{path}: the verdict compares with each task alone; remove compare.single_task: false")
    if vspec.replicates < 20 or not 0.5 <= vspec.confidence < 1:
        raise ConfigError(
            f"{path}: verdict.replicates must be >= 20 and verdict.confidence in [0.5, 1), got "
            f"{vspec.replicates} and {vspec.confidence}"
        )
    if any(k < 2 for k in vspec.groups):
        raise ConfigError(f"{path}: verdict.groups lists group counts >= 2 (e.g. [2, 3]), got {vspec.groups}")
    if vspec.front:
        plan_front(base, fspec)  # every point and method planned: a bad front section fails here
    if vspec.merge:
        validate_merge(base, mspec)
    return Study(base, cspec, vspec, fspec, mspec)


class Progress:
    """Runs done / left over the whole study, and an ETA from the runs trained in this session."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log, self.done, self.trained_s, self.trained = log, set[Path](), 0.0, 0

    def run(self, runs: Sequence[Run], planned: int) -> list[dict[str, Any]]:
        results = []
        for run in runs:
            reused = run.dir in self.done or finished(run)
            start = time.perf_counter()
            results.append(execute(run, self.log))
            if not reused:  # reused runs take no time: only trained ones predict the rest
                self.trained_s, self.trained = self.trained_s + time.perf_counter() - start, self.trained + 1
            self.done.add(run.dir)
            left = max(planned - len(self.done), 0)
            eta = f", ETA {self.trained_s / self.trained * left / 60:.1f} min" if self.trained and left else ""
            self.log(f"verdict: {len(self.done)}/{planned} runs done, {left} left{eta}")
        return results


def group_runs(base: RunConfig, spec: CompareSpec, partitions: Mapping[int, Mapping[str, Any]]) -> list[Run]:
    """Rows of task groups: a joint run per multi-task group (first method), a lone task's single-task run."""
    root = Path(base.output_dir)
    experiment = Experiment(base).with_overrides({"finetune": None})
    singles = {(r.task, r.seed): r for r in plan(base, spec) if r.kind == "single" and r.label == SINGLE}
    runs, seen = [], set()
    for info in partitions.values():
        label = group_label(info["groups"])
        if label in seen:
            continue
        seen.add(label)
        for seed in range(spec.seeds):
            for group in info["groups"]:
                if len(group) == 1:
                    alone = singles[(group[0], seed)]
                    runs.append(Run("joint", label, seed, alone.config, alone.task))
                    continue
                out = root / "groups" / dir_name("+".join(group)) / f"seed{seed}"
                sub = experiment.subset(group, out, as_spec(spec.methods[0])).with_overrides([f"train.seed={seed}"])
                runs.append(Run("joint", label, seed, sub.config))
    return runs


def row_predictions(
    runs: Sequence[Run], experiment: Experiment, device: Any
) -> dict[str, list[dict[str, TaskPredictions]]]:
    """Per row, per seed: the test predictions of its runs, merged over tasks."""
    test, loading = experiment.data.test, experiment.config.loading
    rows: dict[str, dict[int, dict[str, TaskPredictions]]] = {}
    for run in runs:
        rows.setdefault(run.label, {}).setdefault(run.seed, {}).update(predictions(run.dir, test, loading, device))
    return {label: [seeds[s] for s in sorted(seeds)] for label, seeds in rows.items()}


def decide(
    summary: Mapping[str, Any], intervals: Mapping[str, Any], costs: Mapping[str, Any], confidence: float
) -> dict[str, Any]:
    """The recommendation: the row with the best validation Δm, judged by its test Δm interval
    against each task alone; where that is not detectably different, the row cheapest to serve
    among those not detectably worse than each task alone (training apart included)."""
    chosen = summary.get("best_on_validation")
    if chosen is None or chosen not in intervals:
        return {"answer": "apart", "row": SINGLE, "reason": "no joint row has a validation Δm"}
    dm = intervals[chosen]["delta_m"]
    outcome = call(dm)
    grouped = chosen.startswith("groups: ")
    if outcome == "better":
        answer = "groups" if grouped else "together"
    elif outcome == "worse":
        answer = "apart"
    else:
        answer = "no detectable difference"
    tasks = {t: call(v) for t, v in intervals[chosen]["tasks"].items()}
    not_worse = [SINGLE, *(label for label, v in intervals.items() if call(v["delta_m"]) != "worse")]
    cheapest = min(not_worse, key=lambda label: costs[label]["latency_ms"])
    return {
        "answer": answer,
        "row": chosen,
        "delta_m": dm,
        "tasks": tasks,
        "cheapest_not_worse": cheapest,
        "confidence": confidence,
    }


MERGED = "merged"  # the row of the merged-model baseline


def verdict(study: Study, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the study, then write ``verdict/results.json`` and the report."""
    base, cspec, vspec = study.base, study.compare, study.verdict
    root = Path(base.output_dir)
    budgets = budget_steps(base, cspec)
    runs = plan(base, cspec, budgets)
    front_runs = [run for _, _, run in plan_front(base, study.front)] if vspec.front else []
    for run in [*runs, *front_runs]:
        check_reusable(run)
    planned = len({r.dir for r in [*runs, *front_runs]})
    groups_planned = sum(1 for k in vspec.groups if 1 < k < len(base.tasks))
    log(f"verdict: {planned} run(s) under {root} (comparison and front), then up to {groups_planned} task grouping(s)")
    progress = Progress(log)
    results = progress.run(runs, planned)

    # the affinity is measured by the first method's joint runs, on their best models
    first = method_label(cspec.methods[0])
    looks = [
        res["affinity"]["matrix"]
        for r, res in zip(runs, results, strict=True)
        if r.label == first and "affinity" in res
    ]
    affinity = mean_affinity(looks)
    partitions = best_partitions(affinity, vspec.groups) if affinity else {}
    extra = group_runs(base, cspec, partitions)
    planned += len({r.dir for r in extra} - {r.dir for r in [*runs, *front_runs]})
    results += progress.run(extra, planned)
    runs = [*runs, *extra]
    progress.run(front_runs, planned)
    front = trade_off_front(base, study.front, log) if vspec.front else None

    tasks = list(base.tasks)
    summary = summarise(runs, results, tasks)
    device = resolve_device(base.train.device)
    experiment = Experiment(base)
    merged = []
    if vspec.merge:
        singles = {(r.task, r.seed): r.dir for r in runs if r.kind == "single" and r.label == SINGLE}
        for seed in range(cspec.seeds):
            single = {t: singles[(t, seed)] for t in tasks}
            merged.append(merged_baseline(base, study.merge, seed, single, log))
            runs.append(
                Run("merged", MERGED, seed, dataclasses.replace(base, output_dir=str(root / "merge" / f"seed{seed}")))
            )
    log("verdict: test predictions and bootstrap intervals")
    rows = row_predictions(runs, experiment, device)
    intervals = paired_bootstrap(rows, SINGLE, summary["higher_is_better"], vspec.replicates, vspec.confidence)
    log("verdict: serving cost (latency measured on this machine)")
    costs = {}
    for label in rows:
        dirs = list(dict.fromkeys(r.dir for r in runs if r.label == label and r.seed == 0))
        # the merged model is trained as the single-task models are: their training cost is its
        trained = summary["rows"][SINGLE if label == MERGED else label]
        costs[label] = {
            **serving_cost(dirs, experiment.data.test, base.loading, device, vspec.latency_examples),
            "train_time_s": trained["train_time_s"][0],
            "peak_mb": trained["peak_cuda_mb"] or trained["peak_rss_mb"],
        }
    decision = decide(summary, intervals, costs, vspec.confidence)
    out = {
        "decision": decision,
        "intervals": intervals,
        "cost": costs,
        "affinity": affinity,
        "groups": {str(k): v for k, v in partitions.items()},
        "front": front,
        "merged": merged,
        "comparison": summary,
        "spec": {
            "compare": {**vars(cspec), "budgets": budgets},
            "verdict": vars(vspec),
            "front": vars(study.front) if vspec.front else None,
            "merge": vars(study.merge) if vspec.merge else None,
            "device": str(device),
        },
        "runs": [{"row": r.label, "seed": r.seed, "task": r.task, "dir": str(r.dir)} for r in runs],
    }
    folder = root / "verdict"
    atomic_write_json(folder / "results.json", out)
    if base.report.enabled:
        from .verdict_report import write_verdict_report

        try:
            write_verdict_report(folder)
        except Exception as e:  # a plotting problem must not lose the finished study
            warnings.warn(f"verdict report not written: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return out
