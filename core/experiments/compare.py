"""``jointtrain compare``: joint training against each task alone, per balancing method, over seeds.

Every run uses the same backbone, data and optimizer; only the task set (one task / all), the
balancing method (or a named variant's overrides, or a sharing architecture) and, for the
single-task runs, the budget change. Budgets (``compare.budgets``) give each task alone either
the joint run's optimizer steps (``steps``: ``train.max_steps``) or the steps in which the joint
run's sampler drew that task's batches (``examples``: equal examples per task). Where every task
is in every batch the two coincide and the ``examples`` runs are not repeated. Each run is an
ordinary run directory (``core.experiments.run.train``: best checkpoint chosen on validation, test
scored once), under::

    output_dir/single/<task>/seed<k>/            each task alone (balancing: ew), budget ``steps``
    output_dir/single/<task>/<budget>/seed<k>/   each task alone, any other budget
    output_dir/joint/<label>/seed<k>/            all tasks, one balancing method, variant or architecture

Finished runs (``results.json`` says so and ``compare_run.json`` holds their cost) are skipped,
interrupted ones resumed, so re-running the command continues a comparison. The summary
(``compare.json``, ``report.md``, ``plots/``) goes in ``output_dir``: per-task test metrics (mean ±
std over seeds), Δm of each joint row against the single-task means of each budget (LibMTL's
formula, ``core.evaluation.delta_m``), the same Δm on validation (what picks a row, e.g. a branch
point, without looking at test), training time, parameter count and peak memory.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .. import plugins
from ..config import RunConfig, apply_overrides, load_config, read_yaml
from ..data import SourceStream
from ..errors import ConfigError
from ..evaluation import delta_m, primary_metric
from ..io import atomic_write_json
from ..rundir.directory import RunDir, RunStatus, config_changes
from ..spec import from_dict
from .builder import Experiment
from .compare_report import SINGLE, single_label, write_compare_report


@dataclass
class CompareSpec:
    """The ``compare:`` section of a config (everything else is the base run config)."""

    methods: list[Any] = field(default_factory=lambda: ["ew"])  # balancing specs: "uw" or {name, **kwargs}
    seeds: int = 3  # runs per row, with train.seed = 0 .. seeds-1
    single_task: bool = True  # train each task alone (the Δm reference)
    #: name -> overrides ("key=value") of extra joint runs with the first method, e.g. regularisation
    variants: dict[str, list[str]] = field(default_factory=dict)
    #: sharing structures (model.architecture specs): one extra joint row each, with the first method;
    #: a branch-depth sweep is a list of branched specs
    architectures: list[Any] = field(default_factory=list)
    #: single-task budgets (names in BUDGETS); the first is the Δm reference of the headline column
    budgets: list[str] = field(default_factory=lambda: ["steps"])


def equal_steps(experiment: Experiment) -> dict[str, int]:
    """Each task alone gets the joint run's optimizer steps."""
    return {t: experiment.config.train.max_steps for t in experiment.config.tasks}


def equal_examples(experiment: Experiment) -> dict[str, int]:
    """Each task alone gets the steps in which the joint run's sampler draws a batch labelled for it.

    Samplers are pure functions of (seed, step), so replaying ``choose`` over the joint run's
    steps counts exactly what it draws with the config's ``train.seed`` (batches of the same size:
    equal examples per task); the other seeds of a comparison draw from the same distribution and
    their single-task runs get these counts too.
    """
    config = experiment.config
    sampler = experiment.sampler()
    if sampler.all_sources:  # every source in every step: no data to load to know the answer
        return equal_steps(experiment)
    sources = experiment.data.train
    sampler.setup({s.name: len(SourceStream(s, config.loading, config.train.seed)) for s in sources})
    tasks_of = {s.name: [t for t in s.tasks if t in config.tasks] for s in sources}
    counts = dict.fromkeys(config.tasks, 0)
    for step in range(config.train.max_steps):
        for task in {t for name in sampler.choose(step) for t in tasks_of[name]}:
            counts[task] += 1
    return counts


#: budget name -> steps of each task's single-task runs, given the joint experiment
BUDGETS: dict[str, Callable[[Experiment], dict[str, int]]] = {"steps": equal_steps, "examples": equal_examples}


COST_FILE = "compare_run.json"  # a run's training cost, written when it finishes


@dataclass
class Run:
    kind: str  # "single" or "joint"
    label: str  # the table row: a single-task row of one budget, a method label or a variant name
    seed: int
    config: RunConfig
    task: str | None = None
    budget: str | None = None  # single-task runs: the budget they were given

    @property
    def dir(self) -> Path:
        return Path(self.config.output_dir)


def method_label(spec: str | Mapping[str, Any]) -> str:
    """``"uw"`` -> ``uw``; ``{name: ew, heuristic: size}`` -> ``ew(heuristic=size)``."""
    if isinstance(spec, str):
        return spec
    kwargs = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec['name']}({kwargs})" if kwargs else str(spec["name"])


def as_spec(method: str | Mapping[str, Any]) -> dict[str, Any]:
    return {"name": method} if isinstance(method, str) else dict(method)


def dir_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "_", label).strip("_")


def read_compare_config(
    path: str | Path, overrides: Sequence[str] = (), methods: Sequence[str] | None = None, seeds: int | None = None
) -> tuple[RunConfig, CompareSpec]:
    """A run config with a ``compare:`` section; command-line methods/seeds replace the section's."""
    raw = apply_overrides(read_yaml(path), overrides)
    spec: CompareSpec = from_dict(CompareSpec, raw.pop("compare", None) or {}, "compare")
    if methods:
        spec.methods = list(methods)
    if seeds is not None:
        spec.seeds = seeds
    base = load_config(raw=raw)
    validate(base, spec, path)
    return base, spec


def validate(base: RunConfig, spec: CompareSpec, path: str | Path = "config") -> None:
    from ..balancing import BALANCERS

    if len(base.tasks) < 2:
        raise ConfigError(
            f"{path}: compare needs at least two tasks (it compares joint training with each task alone); "
            f"the config has {list(base.tasks)}. Add tasks, or use 'jointtrain train' for one task."
        )
    unknown = [b for b in spec.budgets if b not in BUDGETS]
    if unknown or not spec.budgets or len(set(spec.budgets)) != len(spec.budgets):
        raise ConfigError(
            f"{path}: compare.budgets must list distinct budgets of {sorted(BUDGETS)}, got {spec.budgets}"
        )
    if spec.seeds <= 0:
        raise ConfigError(f"{path}: compare.seeds must be >= 1, got {spec.seeds}")
    if not spec.methods:
        raise ConfigError(f"{path}: compare.methods is empty; list balancing methods, e.g. [ew, uw, dwa]")
    plugins.load(base.imports)
    for method in spec.methods:
        name = method if isinstance(method, str) else method.get("name") if isinstance(method, Mapping) else None
        if name is None:
            raise ConfigError(f"{path}: compare.methods entry {method!r} must be a name or a {{name, ...}} mapping")
        try:
            BALANCERS.build(method)
        except ConfigError as e:
            raise ConfigError(f"{path}: compare.methods entry {method_label(method)!r}: {e}") from e
    labels = [method_label(m) for m in spec.methods] + list(spec.variants)
    labels += [f"arch={method_label(a)}" for a in spec.architectures]
    if len(set(labels)) != len(labels) or SINGLE in labels:
        raise ConfigError(f"{path}: compare rows need unique names other than '{SINGLE}', got {labels}")


def budget_steps(base: RunConfig, spec: CompareSpec) -> dict[str, dict[str, Any]]:
    """Per budget: steps of each task alone, and the earlier budget it coincides with (then not run)."""
    experiment = Experiment(base)
    out: dict[str, dict[str, Any]] = {}
    for budget in spec.budgets:
        steps = BUDGETS[budget](experiment)
        same = next((b for b, done in out.items() if done["steps"] == steps), None)
        out[budget] = {"steps": steps, "same_as": same}
    return out


def plan(base: RunConfig, spec: CompareSpec, budgets: Mapping[str, Mapping[str, Any]] | None = None) -> list[Run]:
    """Every run of the comparison, each a full RunConfig with its own output_dir and seed."""
    root = Path(base.output_dir)
    # a second stage would spend more budget on some rows than others
    experiment = Experiment(base).with_overrides({"finetune": None})
    budgets = budgets if budgets is not None else budget_steps(base, spec)
    runs: list[Run] = []

    def seeded(exp: Experiment, out: Path, seed: int, extra: Sequence[str] = ()) -> RunConfig:
        return exp.with_overrides([*extra, f"output_dir={out / f'seed{seed}'}", f"train.seed={seed}"]).config

    for seed in range(spec.seeds):
        if spec.single_task:
            for k, (budget, info) in enumerate(budgets.items()):
                if info["same_as"] is not None:
                    continue
                label = single_label(budget, first=k == 0)
                for task in base.tasks:
                    single = experiment.single_task(task)
                    out = root / "single" / dir_name(task) / ("" if k == 0 else budget)
                    steps = [f"train.max_steps={info['steps'][task]}"]
                    runs.append(Run("single", label, seed, seeded(single, out, seed, steps), task, budget))
        for method in spec.methods:
            label = method_label(method)
            joint = experiment.with_overrides({"balancing": as_spec(method)})
            runs.append(Run("joint", label, seed, seeded(joint, root / "joint" / dir_name(label), seed)))
        for name, overrides in spec.variants.items():
            joint = experiment.with_overrides({"balancing": as_spec(spec.methods[0])})
            runs.append(Run("joint", name, seed, seeded(joint, root / "joint" / dir_name(name), seed, overrides)))
        for architecture in spec.architectures:
            label = f"arch={method_label(architecture)}"
            joint = experiment.with_overrides(
                {"balancing": as_spec(spec.methods[0]), "model.architecture": as_spec(architecture)}
            )
            runs.append(Run("joint", label, seed, seeded(joint, root / "joint" / dir_name(label), seed)))
    return runs


def check_reusable(run: Run) -> None:
    """A run directory made by another config must not be reused: its results would be stale."""
    rundir = RunDir(run.dir)
    if not rundir.config.is_file():
        return
    saved = yaml.safe_load(rundir.config.read_text()) or {}
    current = {**run.config.to_dict(), "output_dir": saved.get("output_dir")}
    _, refused = config_changes(saved, current)
    if refused:
        raise ConfigError(
            f"run directory {run.dir} was made by a config with different {', '.join(refused)}; "
            "results there would not match this comparison. Use another output_dir or delete that directory."
        )


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, Any]]:
    """Peak memory of the block: CUDA allocations, and the process's peak RSS.

    On Linux the RSS high-water mark is reset through ``/proc/self/clear_refs`` so it covers this
    block only; elsewhere it falls back to ``getrusage`` (process-wide since start; said so).
    """
    out: dict[str, Any] = {}
    reset = False
    if sys.platform.startswith("linux"):
        try:
            Path("/proc/self/clear_refs").write_text("5")
            reset = True
        except OSError:
            pass
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield out
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    hwm = _vm_hwm_mb() if reset else None
    if hwm is not None:
        out["peak_rss_mb"], out["peak_rss_scope"] = hwm, "run"
    else:
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is bytes on macOS, KiB on Linux
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20
        out["peak_rss_scope"] = "process"


def _vm_hwm_mb() -> float | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def finished(run: Run) -> bool:
    """The run finished and its costs were recorded: its results are reused, nothing is trained."""
    status = RunDir(run.dir).results().get("run", {}).get("status")
    return status is not None and RunStatus(status).finished and (run.dir / COST_FILE).is_file()


def execute(run: Run, log: Any = print) -> dict[str, Any]:
    """Train one run (or resume it, or reuse its finished results); returns its summary + costs."""
    from ..distributed import resolve_device
    from .run import train

    check_reusable(run)
    rundir, cost_path = RunDir(run.dir), run.dir / COST_FILE
    if finished(run):
        log(f"  [done]    {run.dir}")
        return {**rundir.summary(), "cost": json.loads(cost_path.read_text()), "parameters": parameter_count(run.dir)}
    resume = rundir.last_checkpoint.is_file()
    if not resume and rundir.holds_run():  # died before its first checkpoint: nothing to resume
        with rundir.writing():
            for path in (rundir.metrics, rundir.results_file):
                path.unlink(missing_ok=True)
    log(f"  [{'resume' if resume else 'train'}]   {run.dir}")
    start = time.perf_counter()
    with peak_memory(resolve_device(run.config.train.device)) as memory:
        result = train(run.config, resume=resume)
    if result.get("status") == RunStatus.INTERRUPTED:
        raise KeyboardInterrupt
    cost = {"wall_time_s": time.perf_counter() - start, "train_time_s": result["train_time_s"], **memory}
    atomic_write_json(cost_path, cost)
    return {**result, "cost": cost, "parameters": parameter_count(run.dir)}


# -- aggregation -----------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def parameter_count(run_dir: Path) -> int:
    """Parameters of the run's saved best model, read from the safetensors header (no weights loaded)."""
    from safetensors import safe_open

    with safe_open(str(RunDir(run_dir).model("best") / "model.safetensors"), "pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def references(
    rows: Mapping[str, Mapping[str, Any]], split: str, tasks: Sequence[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """Per single-task row (one per budget): the mean of each task's metrics on ``split`` (loss excluded)."""
    out = {}
    for label, row in rows.items():
        means = row["metrics"] if split == "test" else row["val_metrics"]
        reference = {t: {m: v[0] for m, v in means[t].items() if m != "loss"} for t in tasks if t in means}
        if row["kind"] == "single" and reference:
            out[label] = reference
    return out


def summarise(runs: Sequence[Run], results: Sequence[dict[str, Any]], tasks: Sequence[str]) -> dict[str, Any]:
    """Per row: per-task metric mean/std over seeds, Δm per seed against each budget's single-task
    means (on test, and on validation for choosing rows), costs and parameter count."""
    hib: dict[str, dict[str, bool]] = {}
    for r in results:
        for t, d in r.get("higher_is_better", {}).items():
            hib.setdefault(t, {}).update(d)
    by_row: dict[str, list[tuple[Run, dict[str, Any]]]] = {}
    for run, res in zip(runs, results, strict=True):
        by_row.setdefault(run.label, []).append((run, res))

    rows: dict[str, dict[str, Any]] = {}
    for label, members in by_row.items():
        metrics: dict[str, dict[str, list[float]]] = {}
        val_metrics: dict[str, dict[str, list[float]]] = {}
        gaps: dict[str, list[float]] = {}
        for _, res in members:
            for split, into in (("tasks", metrics), ("val", val_metrics)):
                for t, values in res.get(split, {}).items():
                    for m, v in values.items():
                        into.setdefault(t, {}).setdefault(m, []).append(v)
            for t in res["tasks"]:
                train = res.get("train", {}).get(t)
                val = res.get("val", {}).get(t)
                if train and val:
                    m = primary_metric(val)
                    sign = 1 if hib[t].get(m, True) else -1
                    gaps.setdefault(t, []).append(sign * (train[m] - val[m]))
        seeds: dict[int, list[dict[str, Any]]] = {}
        for run, res in members:
            seeds.setdefault(run.seed, []).append(res)
        first = members[0][0]
        rows[label] = {
            "kind": first.kind,
            **({"budget": first.budget} if first.budget else {}),
            "seeds": len(seeds),
            "metrics": {t: {m: mean_std(v) for m, v in ms.items()} for t, ms in metrics.items()},
            "val_metrics": {t: {m: mean_std(v) for m, v in ms.items()} for t, ms in val_metrics.items()},
            "gap": {t: mean_std(v) for t, v in gaps.items()},
            # a single-task row costs K trainings: its time and parameters are their sums, its memory their max
            "train_time_s": mean_std([sum(r["cost"]["train_time_s"] for r in rs) for rs in seeds.values()]),
            "parameters": sum(r["parameters"] for r in next(iter(seeds.values()))),
            "peak_rss_mb": max(r["cost"]["peak_rss_mb"] for _, r in members),
            "peak_rss_scope": members[0][1]["cost"].get("peak_rss_scope", "process"),
            "peak_cuda_mb": max((r["cost"].get("peak_cuda_mb", 0.0) for _, r in members), default=0.0) or None,
            "per_seed": {s: {t: v for r in rs for t, v in r["tasks"].items()} for s, rs in sorted(seeds.items())},
            "per_seed_val": {s: {t: v for r in rs for t, v in r["val"].items()} for s, rs in sorted(seeds.items())},
        }
    test_refs, val_refs = references(rows, "test", tasks), references(rows, "val", tasks)
    for row in rows.values():
        if row["kind"] != "joint":
            continue
        # keyed by budget; "delta_m" (and "val_delta_m") is against the first budget's row
        for key, refs, seeds_key in (("delta_m", test_refs, "per_seed"), ("val_delta_m", val_refs, "per_seed_val")):
            row[f"{key}_by_budget"] = {
                rows[single]["budget"]: mean_std([delta_m(r, ref, hib) for r in row[seeds_key].values()])
                for single, ref in refs.items()
            }
            if SINGLE in refs:
                row[key] = row[f"{key}_by_budget"][rows[SINGLE]["budget"]]
    best_per_task = {}
    for t in tasks:
        m = next((primary_metric(row["metrics"][t]) for row in rows.values() if t in row["metrics"]), None)
        if m is None:
            continue
        sign = 1 if hib.get(t, {}).get(m, True) else -1
        scored = {label: sign * row["metrics"][t][m][0] for label, row in rows.items() if t in row["metrics"]}
        best_per_task[t] = {"row": max(scored, key=scored.__getitem__), "metric": m}

    def best(key: str) -> str | None:
        joint = {label: row[key][0] for label, row in rows.items() if key in row}
        return max(joint, key=joint.__getitem__) if joint else None

    return {
        "tasks": list(tasks),
        "rows": rows,
        "baselines": test_refs.get(SINGLE, {}),
        "higher_is_better": hib,
        "best_per_task": best_per_task,
        "best_overall": best("delta_m"),
        # the row a user should pick: chosen on validation, so its test Δm is an honest estimate
        "best_on_validation": best("val_delta_m"),
    }


def compare(base: RunConfig, spec: CompareSpec, log: Any = print) -> dict[str, Any]:
    """Run (or resume) every run of the comparison, then write compare.json and the report."""
    root = Path(base.output_dir)
    budgets = budget_steps(base, spec)
    runs = plan(base, spec, budgets)
    for run in runs:
        check_reusable(run)  # fail before training anything when a directory is stale
    log(f"compare: {len(runs)} run(s) under {root}")
    results = [execute(run, log) for run in runs]
    summary = summarise(runs, results, list(base.tasks))
    summary["runs"] = [
        {
            "row": run.label,
            "seed": run.seed,
            "task": run.task,
            "budget": run.budget,
            "dir": str(run.dir),
            "cost": res["cost"],
            "parameters": res["parameters"],
        }
        for run, res in zip(runs, results, strict=True)
    ]
    summary["spec"] = {
        "methods": spec.methods,
        "seeds": spec.seeds,
        "variants": spec.variants,
        "architectures": spec.architectures,
        "budgets": budgets,
    }
    atomic_write_json(root / "compare.json", summary)
    if base.report.enabled:
        try:
            write_compare_report(root)
        except Exception as e:  # a plotting problem must not lose the finished comparison
            warnings.warn(f"comparison report not written: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)
    return summary
