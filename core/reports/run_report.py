"""The run report: ``report.md`` plus PNG plots, from what a run directory already holds.

Reads ``config.yaml``, ``metrics.jsonl`` and ``results.json``; writes ``report.md`` and ``plots/*.png``
into the run directory. ``jointtrain report RUN`` regenerates it. matplotlib (the ``report`` extra)
is imported only here, only when plotting, so ``core`` imports with torch alone.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from ..architectures import DIAGNOSTIC_PREFIXES
from ..architectures.groups import branched_from_groups
from ..errors import CheckpointError, ConfigError
from ..evaluation import Results, delta_m, primary_metric
from ..io import atomic_write_text
from ..rundir.directory import RunDir
from ..rundir.metrics_log import read_jsonl
from .affinity import Matrix, cosine_affinity, parse_cosine_key, suggest_groups


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or a clear error naming the extra."""
    try:
        import matplotlib
    except ImportError as e:
        raise ConfigError("run reports need matplotlib: pip install 'jointtrain[report]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, title: str | None = None) -> Path:
    """Lay out, write and close a report figure."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """What a report needs from a run directory: config, metrics log records, results."""
    run = RunDir(run_dir)
    if not run.metrics.is_file():
        raise CheckpointError(f"{run.path} is not a run directory: it has no metrics.jsonl (written by training)")
    config = (yaml.safe_load(run.config.read_text()) or {}) if run.config.is_file() else {}
    records = read_jsonl(run.metrics)
    setup = next((r for r in records if r.get("split") == "setup"), {})
    return {
        "dir": run.path,
        "config": config,
        "eval": run.summary(),
        "train": [r for r in records if r.get("split") == "train"],
        "val": [r for r in records if r.get("split") == "val"],
        "setup": setup,
        "tasks": list(setup.get("tasks") or config.get("tasks", {})),
    }


def directions(run: Mapping[str, Any]) -> dict[str, dict[str, bool]]:
    """higher-is-better per task metric: from results.json, else from the saved model's task specs."""
    recorded = run["eval"].get("higher_is_better")
    if recorded:
        return recorded
    best = Path(run["dir"]) / "best"
    if (best / "config.json").is_file():
        from ..evaluation import higher_is_better
        from ..model import JointModel

        return higher_is_better(JointModel.from_config(json.loads((best / "config.json").read_text())))
    return {}


def fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (train losses are per-batch and noisy)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def best_val_record(run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The validation record the best checkpoint was selected on (first maximum of the score)."""
    best = None
    for record in run["val"]:
        if best is None or record["score"] > best["score"]:
            best = record
    return best


# -- plots -----------------------------------------------------------------------------------
def plot_curves(run: Mapping[str, Any], path: Path) -> Path:
    """Per task: train and validation loss (top), validation primary metric (bottom)."""
    plt = pyplot()
    tasks = run["tasks"]
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.5), squeeze=False)
    best = best_val_record(run)
    for col, task in enumerate(tasks):
        top, bottom = axes[0][col], axes[1][col]
        steps = [r["step"] for r in run["train"] if f"loss/{task}" in r]
        losses = [r[f"loss/{task}"] for r in run["train"] if f"loss/{task}" in r]
        if steps:
            top.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
            top.plot(steps, smooth(losses, max(1, len(losses) // 10)), color="tab:blue", label="train (moving avg.)")
        val = [(r["step"], r["tasks"][task]) for r in run["val"] if task in r.get("tasks", {})]
        if val:
            top.plot([s for s, _ in val], [m["loss"] for _, m in val], "o-", color="tab:orange", label="validation")
            metric = primary_metric(val[0][1])
            bottom.plot([s for s, _ in val], [m[metric] for _, m in val], "o-", color="tab:green")
            bottom.set_ylabel(f"validation {metric}")
        if best is not None:
            for ax in (top, bottom):
                ax.axvline(best["step"], color="grey", linestyle="--", linewidth=1, label="best checkpoint")
        top.set_title(f"task '{task}'")
        top.set_ylabel("loss")
        top.set_yscale("log" if losses and min(losses) > 0 else "linear")
        top.legend(fontsize=8)
        bottom.set_xlabel("optimizer step")
        bottom.grid(alpha=0.3)
        top.grid(alpha=0.3)
    return save_figure(fig, path, "Training and validation curves")


def plot_series(
    run: Mapping[str, Any], prefix: str, path: Path, title: str, ylabel: str, labels: Mapping[str, str]
) -> Path | None:
    """One line per logged key ``<prefix>...`` of the train records (task weights, gradient cosines)."""
    keys = list(labels)
    if not keys:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for key in keys:
        points = [(r["step"], r[key]) for r in run["train"] if key in r]
        ax.plot([s for s, _ in points], [v for _, v in points], label=labels[key])
    if prefix == "cos/":
        ax.axhline(0, color="grey", linewidth=1)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def gate_keys(run: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """Task -> {logged key: label} of the expert architectures' gate diagnostics
    (``gate/<task>/entropy``, ``gate/<task>/expert<i>``: ``Architecture.diagnostics``)."""
    out: dict[str, dict[str, str]] = {}
    for record in run["train"]:
        for key in record:
            parts = key.split("/")
            if key.startswith(DIAGNOSTIC_PREFIXES) and len(parts) == 3 and parts[1] in run["tasks"]:
                out.setdefault(parts[1], {})[key] = parts[2]
    return {t: out[t] for t in run["tasks"] if t in out}


def plot_gates(run: Mapping[str, Any], keys: Mapping[str, Mapping[str, str]], path: Path) -> Path:
    """Left: each task's gate entropy over training; then one panel per task: the mean weight it gives
    each expert (load). A gate collapsing on one expert shows as entropy falling towards 0."""
    plt = pyplot()
    panels = len(keys) + 1
    cols = min(4, panels)  # wrap: seven diseases would make one unreadably wide row
    rows = -(-panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    axes = list(grid.flat)
    for unused in axes[panels:]:
        unused.set_visible(False)

    def draw(ax: Any, key: str, label: str) -> None:
        points = [(r["step"], r[key]) for r in run["train"] if key in r]
        ax.plot([s for s, _ in points], [v for _, v in points], label=label)

    entropy = axes[0]
    for task, labelled in keys.items():
        for key, name in labelled.items():
            if name == "entropy":
                draw(entropy, key, task)
    entropy.set_title("gate entropy")
    entropy.set_ylabel("entropy (nats)")
    for ax, (task, labelled) in zip(axes[1:panels], keys.items(), strict=True):
        for key, name in labelled.items():
            if name != "entropy":
                draw(ax, key, name)
        ax.set_title(f"task '{task}': expert load")
        ax.set_ylabel("mean gate weight")
    for ax in axes[:panels]:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return save_figure(fig, path, "Mixture-of-experts gates over training")


def plot_affinity(matrix: Matrix, path: Path, title: str, unit: str) -> Path:
    plt = pyplot()
    tasks = list(matrix)
    values = [[matrix[a][b] for b in tasks] for a in tasks]
    finite = [abs(v) for row in values for v in row if v == v]
    bound = max(finite) if finite else 1.0
    fig, ax = plt.subplots(figsize=(1.4 * len(tasks) + 2.5, 1.2 * len(tasks) + 1.8))
    image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    ax.set_yticks(range(len(tasks)), tasks)
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            dark = v == v and abs(v) > 0.6 * bound  # white text on the saturated cells
            ax.text(j, i, fmt(v, 2), ha="center", va="center", fontsize=9, color="white" if dark else "black")
    ax.set_xlabel("affected task j")
    ax.set_ylabel("task i")
    fig.colorbar(image, ax=ax, label=unit)
    ax.set_title(title)
    return save_figure(fig, path)


def plot_gap(splits: Mapping[str, Results], path: Path, title: str) -> Path:
    """Grouped bars: each task's primary metric on train / validation / test (overfitting at a glance)."""
    plt = pyplot()
    present = {s: r for s, r in splits.items() if r}
    reference = present.get("val") or next(iter(present.values()))
    metrics = {t: primary_metric(m) for t, m in reference.items()}
    colours = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}
    width = 0.8 / len(present)
    fig, ax = plt.subplots(figsize=(1.8 * len(metrics) + 3, 4))
    for k, (split, results) in enumerate(present.items()):
        xs = [i + (k - (len(present) - 1) / 2) * width for i in range(len(metrics))]
        heights = [results.get(t, {}).get(m, math.nan) for t, m in metrics.items()]
        bars = ax.bar(xs, heights, width, label=split, color=colours.get(split))
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    zoom(ax, [v for r in present.values() for t, m in metrics.items() if (v := r.get(t, {}).get(m)) is not None])
    ax.set_xticks(range(len(metrics)), [f"{t}\n({m})" for t, m in metrics.items()])
    ax.set_ylabel("primary metric")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    return save_figure(fig, path)


def zoom(ax: Any, values: Sequence[float]) -> None:
    """Bars of close values (0.95 vs 0.97) are unreadable from 0: start the axis near the smallest."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite or min(finite) <= 0:
        return
    lo, hi = min(finite), max(finite)
    span = max(hi - lo, 0.02 * hi)
    ax.set_ylim(max(0.0, lo - 1.5 * span), hi + 0.6 * span)


# -- report ----------------------------------------------------------------------------------
def gap_rows(splits: Mapping[str, Results], hib: Mapping[str, Mapping[str, bool]]) -> list[list[str]]:
    """Per task: primary metric on train and validation, and the gap signed so positive = overfitting."""
    rows = []
    for task, val in splits.get("val", {}).items():
        metric = primary_metric(val)
        train = splits.get("train", {}).get(task, {}).get(metric)
        sign = 1 if hib.get(task, {}).get(metric, True) else -1
        gap = sign * (train - val[metric]) if train is not None else None
        loss_gap = val["loss"] - splits["train"][task]["loss"] if train is not None else None
        rows.append([task, metric, fmt(train), fmt(val[metric]), fmt(gap), fmt(loss_gap)])
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and ``plots/*.png`` for a run directory; returns the report's path."""
    run = load_run(run_dir)
    out = Path(run_dir)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    tasks, ev = run["tasks"], run["eval"]
    hib = directions(run)
    lines = [f"# Run report: `{out}`", ""]
    setup = run["setup"]
    config = run["config"]
    lines += [
        f"- tasks: {', '.join(tasks)}",
        f"- balancing: `{setup.get('balancer', json.dumps(config.get('balancing')))}`, "
        f"sampler: {setup.get('sampler', json.dumps(config.get('sampler')))}",
        f"- device: {setup.get('device', '?')}, status: {ev.get('status', 'not finished')}, "
        f"steps: {ev.get('step', run['train'][-1]['step'] if run['train'] else 0)}"
        + (f", training time: {ev['train_time_s']:.1f} s" if "train_time_s" in ev else ""),
        "",
    ]
    if run["val"] or any(f"loss/{t}" in r for r in run["train"] for t in tasks):
        plot_curves(run, plots / "curves.png")
        lines += ["## Training and validation curves", "", "![curves](plots/curves.png)", ""]
    weight_keys = {f"weight/{t}": t for t in tasks if any(f"weight/{t}" in r for r in run["train"])}
    if plot_series(run, "weight/", plots / "weights.png", "Task weights over training", "weight", weight_keys):
        lines += ["## Task weights", "", "![weights](plots/weights.png)", ""]
    cos_keys = {}
    for record in run["train"]:
        for key in record:
            pair = parse_cosine_key(key, tasks)
            if pair is not None:
                cos_keys[key] = f"{pair[0]} · {pair[1]}"
    title = "Pairwise task-gradient cosine similarity"
    if plot_series(run, "cos/", plots / "cosines.png", title, "cosine", cos_keys):
        lines += ["## Task-gradient cosine similarity", "", "![cosines](plots/cosines.png)", ""]
    gates = gate_keys(run)
    if gates:
        plot_gates(run, gates, plots / "gates.png")
        lines += [
            "## Mixture-of-experts gates",
            "",
            "Per task: the entropy of its gate (nats; log of the number of experts = uniform, 0 = one expert) "
            "and the mean weight it gives each expert, over training.",
            "",
            "![gates](plots/gates.png)",
            "",
        ]

    if ev.get("tasks"):
        lines += final_metrics_section(ev, config.get("baselines") or {}, hib)
        best = best_val_record(run)
        splits = {"train": ev.get("train", {}), "val": best["tasks"] if best else ev.get("val", {})}
        splits[ev.get("split", "test")] = ev["tasks"]
        if splits["val"] and splits["train"]:
            plot_gap(splits, plots / "gap.png", "Best checkpoint: train vs validation vs test")
            lines += [
                "## Train–validation gap (overfitting at a glance)",
                "",
                "Gap = train − validation on the primary metric (signed so that positive means the model "
                "does better on data it was trained on). Train metrics come from a sample of the training "
                f"split (`report.train_eval_samples`: {config.get('report', {}).get('train_eval_samples', '?')}).",
                "",
                markdown_table(
                    ["task", "metric", "train", "validation", "gap", "val − train loss"], gap_rows(splits, hib)
                ),
                "",
                "![gap](plots/gap.png)",
                "",
            ]
    lines += affinity_section(run, plots)
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def write_report_safely(run: RunDir) -> None:
    """The report comes after a finished training, which a plotting problem must not fail."""
    try:
        write_report(run.path)
    except Exception as e:  # any failure (matplotlib missing, odd logs): warn, keep the trained run
        warnings.warn(f"run report for {run.path} not written: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def record_baselines(run_dir: str | Path, baselines: Mapping[str, Results]) -> Path:
    """Keep the baselines a demo computed on the run's splits (``{name: {task: {metric: value}}}``) in
    ``results.json`` under ``baselines``, and rewrite the report, which shows them beside the model."""
    run = RunDir(run_dir)
    numeric = {
        name: {t: {m: float(v) for m, v in ms.items() if isinstance(v, int | float)} for t, ms in tasks.items()}
        for name, tasks in baselines.items()
    }
    run.update_results("baselines", value=numeric)
    return write_report(run.path)


def final_metrics_section(
    ev: Mapping[str, Any], baselines: Mapping[str, Mapping[str, float]], hib: Mapping[str, Mapping[str, bool]]
) -> list[str]:
    """The best model's test metrics beside every baseline: the config's (``baselines:``, the Δm
    reference of model selection) and those the run's demo recorded (``results.json`` ``baselines``)."""
    split = ev.get("split", "test")
    columns: dict[str, Mapping[str, Mapping[str, float]]] = {"baseline": baselines} if baselines else {}
    columns.update(ev.get("baselines") or {})
    rows = []
    for task, metrics in ev["tasks"].items():
        for metric, value in metrics.items():
            rows.append([task, metric, fmt(value), *[fmt(c.get(task, {}).get(metric)) for c in columns.values()]])
    lines = [f"## Final metrics ({split} split, best checkpoint)", ""]
    lines += [markdown_table(["task", "metric", split, *columns], rows), ""]
    # without config baselines, the trainer's Δm is against its first validation result: not a baseline
    if "delta_m" in ev and baselines:
        lines += [f"Δm against the baselines: **{ev['delta_m']:+.2f}%** (positive = better than the baselines).", ""]
    for name, base in (ev.get("baselines") or {}).items():
        # the metrics both sides report, whose direction is known and whose baseline is not 0 (no
        # relative change from 0: copying digits scores 0 on every metric of a number task)
        covered = {
            t: {m: v for m, v in ms.items() if m in hib.get(t, {}) and v != 0}
            for t, ms in base.items()
            if t in ev["tasks"]
        }
        covered = {t: ms for t, ms in covered.items() if ms}
        if covered:
            gain = delta_m(ev["tasks"], covered, hib)
            lines += [f"Δm against `{name}` (tasks {', '.join(covered)}): **{gain:+.2f}%** (positive = better).", ""]
        elif any(t in ev["tasks"] for t in base):
            lines += [f"Δm against `{name}`: undefined, its shared metrics are all 0.", ""]
    if not columns:
        lines += ["No baselines in the config (`baselines: {task: {metric: value}}`), so no Δm.", ""]
    return lines


def affinity_section(run: Mapping[str, Any], plots: Path) -> list[str]:
    tasks = run["tasks"]
    lines: list[str] = []
    cos = cosine_affinity(run["train"], tasks)
    if cos is not None:
        plot_affinity(cos, plots / "affinity_cosine.png", "Mean task-gradient cosine", "cosine")
        lines += [
            "## Task affinity (logged gradient cosines)",
            "",
            f"Suggested groups (mean cosine > 0): {format_groups(suggest_groups(cos))}",
            "",
            "![cosine affinity](plots/affinity_cosine.png)",
            "",
        ]
    look = run["eval"].get("affinity")
    if look:
        plot_affinity(
            look["matrix"],
            plots / "affinity_lookahead.png",
            f"Look-ahead affinity (SGD step lr={look['lr']})",
            "% loss decrease of task j",
        )
        lines += [
            "## Task affinity (look-ahead)",
            "",
            f"Row i, column j: % by which one SGD step (lr={look['lr']}) on task i's loss, on the shared "
            f"parameters only, lowers task j's loss; mean over {look['batches']} training batch(es), "
            "best checkpoint. Positive = i helps j.",
            "",
            f"Suggested groups (mutual look-ahead > 0): {format_groups(suggest_groups(look['matrix']))}",
            "",
            "As a sharing structure to try (`model.architecture`, e.g. in a `compare.architectures` sweep): "
            f"`{json.dumps(branched_from_groups(suggest_groups(look['matrix']), 1, 2))}`",
            "",
            "![look-ahead affinity](plots/affinity_lookahead.png)",
            "",
        ]
    return lines


def format_groups(groups: list[list[str]]) -> str:
    return ", ".join("{" + ", ".join(g) + "}" for g in groups)
