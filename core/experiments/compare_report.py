"""The report of a whole comparison (``jointtrain compare``): ``report.md`` + plots in its output_dir.

Built from ``compare.json`` and the runs' own directories, so ``jointtrain report OUTPUT_DIR``
regenerates it like a run's report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..io import atomic_write_text
from ..reports.affinity import cosine_affinity, suggest_groups
from ..reports.run_report import format_groups, load_run, markdown_table, plot_affinity, pyplot, zoom

SINGLE = "single-task"


def single_label(budget: str, first: bool) -> str:
    """The single-task row of a budget: the first budget's is the plain Δm reference."""
    return SINGLE if first else f"{SINGLE} ({budget})"


def budget_columns(summary: Mapping[str, Any]) -> list[str]:
    """Budgets with their own single-task row (a coinciding budget has no runs of its own)."""
    budgets = summary["spec"].get("budgets") or {"steps": {"same_as": None}}
    return [b for b, info in budgets.items() if info["same_as"] is None]


def format_table(summary: Mapping[str, Any]) -> str:
    """The comparison as a markdown table: primary metric per task (mean ± std), Δm per budget (test,
    and validation: what chooses a row), time, parameters, memory."""
    tasks = summary["tasks"]
    rows = summary["rows"]
    metric = {t: summary["best_per_task"][t]["metric"] for t in tasks if t in summary["best_per_task"]}
    budgets = budget_columns(summary)
    header = [
        "row",
        "seeds",
        *[f"{t} {metric.get(t, '')}" for t in tasks],
        *[f"Δm % vs single-task ({b})" for b in budgets],
        "val Δm % (selection)",
        "train s",
        "parameters",
        "peak MB",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for label, row in rows.items():
        cells = [label, str(row["seeds"])]
        for t in tasks:
            if t in row["metrics"] and t in metric:
                mean, std = row["metrics"][t][metric[t]]
                best = summary["best_per_task"][t]["row"] == label
                cell = f"{mean:.4f} ± {std:.4f}"
                cells.append(f"**{cell}**" if best else cell)
            else:
                cells.append("–")
        for k, budget in enumerate(budgets):
            if budget in row.get("delta_m_by_budget", {}):
                mean, std = row["delta_m_by_budget"][budget]
                cell = f"{mean:+.2f} ± {std:.2f}"
                cells.append(f"**{cell}**" if k == 0 and summary["best_overall"] == label else cell)
            else:
                cells.append("0 (reference)" if row.get("budget") == budget else "–")
        if "val_delta_m" in row:
            mean, std = row["val_delta_m"]
            cell = f"{mean:+.2f} ± {std:.2f}"
            cells.append(f"**{cell}**" if summary.get("best_on_validation") == label else cell)
        else:
            cells.append("–")
        mean, std = row["train_time_s"]
        cells.append(f"{mean:.1f} ± {std:.1f}")
        cells.append(f"{row['parameters']:,}" if "parameters" in row else "–")
        memory = row["peak_cuda_mb"] if row["peak_cuda_mb"] else row["peak_rss_mb"]
        cells.append(f"{memory:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_lines(summary: Mapping[str, Any]) -> list[str]:
    """What each single-task budget gave every task, and which budgets coincide."""
    budgets = summary["spec"].get("budgets")
    if not budgets:
        return []
    lines = ["Single-task budgets (optimizer steps of each task alone; batches of the joint run's size):", ""]
    for budget, info in budgets.items():
        steps = ", ".join(f"{t} {n}" for t, n in info["steps"].items())
        same = (
            f" — the same as `{info['same_as']}` (every task gets a batch in every joint step), so not run twice"
            if info["same_as"]
            else ""
        )
        lines.append(f"- `{budget}`: {steps}{same}")
    return [*lines, ""]


COLOURS = ["tab:grey", "tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink"]


def grouped_bars(
    summary: Mapping[str, Any], values: dict[str, dict[str, tuple[float, float]]], path: Path, title: str, ylabel: str
) -> Path:
    """One group per task, one bar (mean ± std over seeds) per comparison row."""
    plt = pyplot()
    tasks = summary["tasks"]
    labels = list(values)
    width = 0.8 / max(len(labels), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(tasks) * len(labels) + 4), 4.5))
    shown = []
    for k, label in enumerate(labels):
        xs, ms, ss = [], [], []
        for i, t in enumerate(tasks):
            if t in values[label]:
                xs.append(i + (k - (len(labels) - 1) / 2) * width)
                ms.append(values[label][t][0])
                ss.append(values[label][t][1])
        shown += ms
        ax.bar(xs, ms, width, yerr=ss, capsize=3, label=label, color=COLOURS[k % len(COLOURS)])
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    if "gap" not in path.name:
        zoom(ax, shown)
    else:
        ax.axhline(0, color="black", linewidth=0.8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_delta_m(summary: Mapping[str, Any], path: Path) -> Path | None:
    rows = {label: row["delta_m"] for label, row in summary["rows"].items() if "delta_m" in row}
    if not rows:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 3.5, 4))
    labels = list(rows)
    means = [rows[label][0] for label in labels]
    bars = ax.bar(
        range(len(labels)),
        means,
        yerr=[rows[label][1] for label in labels],
        capsize=4,
        color=["tab:green" if m > 0 else "tab:red" for m in means],
    )
    ax.bar_label(bars, fmt="%+.2f", fontsize=8, padding=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.margins(y=0.2)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_ylabel("Δm (%) vs single-task")
    ax.set_title(f"Multi-task improvement Δm (mean ± std over {summary['spec']['seeds']} seed(s))")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_val_curves(summary: Mapping[str, Any], runs: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Per task: validation primary metric vs step, mean over seeds, one line per row."""
    plt = pyplot()
    tasks = summary["tasks"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 4), squeeze=False)
    for col, t in enumerate(tasks):
        ax = axes[0][col]
        metric = summary["best_per_task"].get(t, {}).get("metric", "loss")
        for k, (label, members) in enumerate(runs.items()):
            curves: dict[int, list[float]] = {}
            for run in members:
                for record in run["val"]:
                    if t in record.get("tasks", {}):
                        curves.setdefault(record["step"], []).append(record["tasks"][t][metric])
            if curves:
                steps = sorted(curves)
                ax.plot(steps, [np.mean(curves[s]) for s in steps], "o-", ms=3, label=label, color=COLOURS[k % 8])
        ax.set_title(f"task '{t}'")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"validation {metric} (mean over seeds)")
        ax.grid(alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(4, len(names)), fontsize=8)
    fig.suptitle("Validation curves per comparison row")
    fig.tight_layout(rect=(0, 0.06 * math.ceil(len(names) / 4), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_matrix(matrices: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]] | None:
    if not matrices:
        return None
    tasks = list(matrices[0])
    out = {}
    for a in tasks:
        out[a] = {}
        for b in tasks:
            values = [m[a][b] for m in matrices if m[a][b] == m[a][b]]
            out[a][b] = float(np.mean(values)) if values else math.nan
    return out


def write_compare_report(root: str | Path) -> Path:
    root = Path(root)
    if not (root / "compare.json").is_file():
        raise CheckpointError(f"{root} holds no compare.json; run 'jointtrain compare CONFIG' first")
    summary = json.loads((root / "compare.json").read_text())
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {}
    for r in summary["runs"]:
        runs.setdefault(r["row"], []).append(load_run(r["dir"]))
    tasks, rows = summary["tasks"], summary["rows"]
    seeds = summary["spec"]["seeds"]
    lines = [
        "# Joint vs separate training",
        "",
        f"Tasks: {', '.join(tasks)}. Rows: `{SINGLE}` = each task trained alone (the Δm reference); the others "
        f"train all tasks jointly with one balancing method (or a named variant, or a sharing architecture). Same "
        f"backbone and data everywhere; the joint rows share one step budget, each single-task row has its own "
        f"(below); {seeds} seed(s) per row; the best checkpoint of each run is chosen on the "
        "validation split and scored once on the test split.",
        "",
        "## Test metrics (mean ± std over seeds)",
        "",
        format_table(summary),
        "",
        "Bold: the best row per task, the best test Δm and the best validation Δm. "
        "Δm (Maninis et al. 2019, as in LibMTL): mean over tasks "
        "of the mean relative change of every metric (loss excluded) against the single-task mean, signed so "
        "that positive = better; one column per single-task budget. `val Δm`: the same on the validation split "
        "against the first budget (the column to choose a row by: it never looks at test). `train s`: training "
        "time of the row (a single-task row sums its K trainings, `parameters` its K models). "
        "`peak MB`: "
        + (
            "peak CUDA memory allocated."
            if any(row["peak_cuda_mb"] for row in rows.values())
            else f"peak resident memory of the process ({next(iter(rows.values()))['peak_rss_scope']}-scoped: "
            "'run' = high-water mark reset before each run, 'process' = since the process started)."
        ),
        "",
    ]
    best = summary["best_per_task"]
    lines += ["Best row per task: " + ", ".join(f"{t} → **{b['row']}** ({b['metric']})" for t, b in best.items())]
    if summary["best_overall"]:
        overall = rows[summary["best_overall"]]["delta_m"]
        verdict = "beats" if overall[0] > 0 else "does not beat"
        lines += [
            "",
            f"Best joint row overall on test: **{summary['best_overall']}** (Δm {overall[0]:+.2f} ± "
            f"{overall[1]:.2f}%): joint training {verdict} training each task alone on average.",
        ]
    chosen = summary.get("best_on_validation")
    if chosen:
        by_budget = rows[chosen]["delta_m_by_budget"]
        lines += [
            "",
            f"Chosen on validation (highest validation Δm): **{chosen}**; its test Δm: "
            + ", ".join(f"{m:+.2f} ± {s:.2f}% ({b})" for b, (m, s) in by_budget.items())
            + ".",
        ]
    lines += ["", *budget_lines(summary)]
    primary = {label: {t: row["metrics"][t][best[t]["metric"]] for t in row["metrics"]} for label, row in rows.items()}
    grouped_bars(summary, primary, plots / "metrics.png", "Test primary metric per task (mean ± std)", "test metric")
    lines += ["![metrics](plots/metrics.png)", ""]
    if plot_delta_m(summary, plots / "delta_m.png"):
        lines += ["![delta m](plots/delta_m.png)", ""]
    plot_val_curves(summary, runs, plots / "val_curves.png")
    lines += ["## Validation curves", "", "![validation curves](plots/val_curves.png)", ""]

    gaps = {label: row["gap"] for label, row in rows.items() if row["gap"]}
    if gaps:
        grouped_bars(
            summary,
            gaps,
            plots / "gap.png",
            "Train − validation gap of the best checkpoint",
            "train − val primary metric",
        )
        variants = summary["spec"].get("variants") or {}
        lines += [
            "## Overfitting: train − validation gap",
            "",
            "Primary metric on (a sample of) the training split minus validation, for the best checkpoint "
            "(positive = better on seen data). "
            + (
                "Variants change regularisation against the first method "
                f"(`{summary['spec']['methods'][0]}`): "
                + "; ".join(f"`{name}`: {', '.join(o)}" for name, o in variants.items())
                + ". Compare their gap and their test metrics with that row."
                if variants
                else "Add `compare.variants` (e.g. weight decay, `train.l1`, dropout, early stopping) to see "
                "their effect here."
            ),
            "",
            markdown_table(
                ["row", *tasks],
                [
                    [label, *[f"{g[t][0]:+.4f} ± {g[t][1]:.4f}" if t in g else "–" for t in tasks]]
                    for label, g in gaps.items()
                ],
            ),
            "",
            "![gap](plots/gap.png)",
            "",
        ]
    lines += affinity_lines(runs, tasks, plots)
    lines += [
        "## Runs",
        "",
        markdown_table(
            ["row", "seed", "task", "run directory (its own report.md)"],
            [[r["row"], str(r["seed"]), r["task"] or "all", f"`{r['dir']}`"] for r in summary["runs"]],
        ),
    ]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path


def affinity_lines(runs: dict[str, list[dict[str, Any]]], tasks: list[str], plots: Path) -> list[str]:
    """Task affinity averaged over every joint run: logged gradient cosines, and look-ahead."""
    joint = [run for label, members in runs.items() if label != SINGLE for run in members]
    lines: list[str] = []
    cos = mean_matrix([m for run in joint if (m := cosine_affinity(run["train"], tasks)) is not None])
    if cos is not None:
        plot_affinity(cos, plots / "affinity_cosine.png", "Mean task-gradient cosine (joint runs)", "cosine")
        lines += [
            "## Task affinity: gradient cosines",
            "",
            f"Suggested groups: {format_groups(suggest_groups(cos))}",
            "",
            "![cosine affinity](plots/affinity_cosine.png)",
            "",
        ]
    looks = [run["eval"]["affinity"] for run in joint if run["eval"].get("affinity")]
    look = mean_matrix([a["matrix"] for a in looks])
    if look is not None:
        plot_affinity(
            look,
            plots / "affinity_lookahead.png",
            f"Look-ahead affinity, mean of {len(looks)} joint run(s)",
            "% loss decrease of task j",
        )
        lines += [
            "## Task affinity: look-ahead",
            "",
            "Row i, column j: % by which one SGD step on task i's loss (shared parameters only, "
            f"lr={looks[0]['lr']}) lowers task j's loss, on each joint run's best checkpoint. "
            "Pairs that help each other are candidates to train together.",
            "",
            f"Suggested groups: {format_groups(suggest_groups(look))}",
            "",
            "![look-ahead affinity](plots/affinity_lookahead.png)",
            "",
        ]
    return lines
