"""The verdict's report: ``verdict/report.md`` with the answer on top, a forest plot, groups and costs.

Built from ``verdict/results.json`` alone, so ``jointtrain report OUTPUT_DIR/verdict`` rewrites it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import atomic_write_text
from ..reports.run_report import markdown_table, pyplot
from .compare_report import SINGLE, format_table
from .front_plot import front_table, plot_front

ANSWERS = {
    "together": "train together",
    "groups": "train in these groups",
    "apart": "train apart",
    "no detectable difference": "no detectable difference",
}


def _ci(v: Mapping[str, float], fmt: str = "{:+.2f}") -> str:
    return f"{fmt.format(v['estimate'])} [{fmt.format(v['low'])}, {fmt.format(v['high'])}]"


def _cost(results: Mapping[str, Any], label: str) -> str:
    c = results["cost"][label]
    return (
        f"{c['models']} model(s), {c['parameters']:,} parameters, {c['latency_ms']:.2f} ms per example, "
        f"training {c['train_time_s']:.3g} s, peak memory {c['peak_mb']:.0f} MB"
    )


def merged_sentence(results: Mapping[str, Any]) -> str:
    """The merged-model baseline's interval, where it was run."""
    if "merged" not in results["intervals"]:
        return ""
    v = results["intervals"]["merged"]
    how = ", ".join(dict.fromkeys(f"{m['method']} λ={m['lambda']:g}" for m in results["merged"]))
    return f" Merging the single-task models instead ({how}, chosen on validation): Δm {_ci(v['delta_m'])} %."


def paragraph(results: Mapping[str, Any]) -> str:
    """The one-paragraph answer: what to do, for which tasks, at what confidence and cost."""
    d = results["decision"]
    level = f"{100 * d.get('confidence', results['spec']['verdict']['confidence']):.0f} %"
    apart = _cost(results, SINGLE)
    if "delta_m" not in d:
        return f"**Verdict: train apart** ({d['reason']}). Each task alone: {apart}."
    row, dm = d["row"], d["delta_m"]
    seeds = results["intervals"][row]["seeds"]
    by_call: dict[str, list[str]] = {}
    for t, outcome in d["tasks"].items():
        by_call.setdefault(outcome, []).append(t)
    per_task = "; ".join(f"{outcome} on {', '.join(ts)}" for outcome, ts in by_call.items())
    cheapest = d["cheapest_not_worse"]
    what = {
        "together": f"train the tasks together (row `{row}`)",
        "groups": f"train in the groups {row.removeprefix('groups: ')}",
        "apart": "train each task apart",
        "no detectable difference": f"`{row}` and each task apart are not detectably different; of the rows "
        f"not detectably worse than apart, the cheapest to serve is `{cheapest}`",
    }[d["answer"]]
    return (
        f"**Verdict: {ANSWERS[d['answer']]}.** {what[0].upper()}{what[1:]}. The row chosen on validation Δm, "
        f"`{row}`, scores Δm {_ci(dm)} % against each task alone on test ({level} interval over "
        f"{seeds} seed(s) × {results['spec']['verdict']['replicates']} paired bootstrap draws of the test examples); "
        f"per task ({level}): {per_task}. Cost of `{row}`: {_cost(results, row)}; each task apart: {apart}."
        f"{merged_sentence(results)}"
    )


def plot_forest(results: Mapping[str, Any], path: Path) -> Path:
    """Per task (and Δm): each row's interval of ``row − each task alone`` (positive = row better)."""
    plt = pyplot()
    intervals = results["intervals"]
    rows = list(intervals)
    tasks = [*results["comparison"]["tasks"], "Δm %"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.6 * len(tasks), 0.45 * len(rows) + 1.8), squeeze=False)
    for col, t in enumerate(tasks):
        ax = axes[0][col]
        for y, label in enumerate(rows):
            v = intervals[label]["delta_m"] if t == "Δm %" else intervals[label]["tasks"].get(t)
            if v is None:
                continue
            colour = "tab:green" if v["low"] > 0 else "tab:red" if v["high"] < 0 else "tab:grey"
            ax.errorbar(
                v["estimate"],
                y,
                # a percentile interval may leave the point outside it (a skewed metric): clip, never fail
                xerr=[[max(v["estimate"] - v["low"], 0.0)], [max(v["high"] - v["estimate"], 0.0)]],
                fmt="o",
                color=colour,
                capsize=3,
            )
        ax.axvline(0, color="black", linewidth=0.8)
        metric = next((intervals[r]["tasks"][t]["metric"] for r in rows if t in intervals[r]["tasks"]), "")
        ax.set_title(t if t == "Δm %" else f"{t}: Δ {metric}", fontsize=9)
        ax.set_yticks(range(len(rows)), rows if col == 0 else [""] * len(rows), fontsize=8)
        ax.set_ylim(-0.7, len(rows) - 0.3)
        ax.grid(alpha=0.3, axis="x")
    level = 100 * results["spec"]["verdict"]["confidence"]
    fig.suptitle(f"Row − each task alone on test ({level:.0f} % intervals; green/red: excludes 0)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def interval_table(results: Mapping[str, Any]) -> str:
    tasks = results["comparison"]["tasks"]
    rows = []
    for label, v in results["intervals"].items():
        cells = [label, str(v["seeds"]), _ci(v["delta_m"]) + f" (p={v['delta_m']['p_better']:.2f})"]
        cells += [_ci(v["tasks"][t], "{:+.4f}") if t in v["tasks"] else "–" for t in tasks]
        rows.append(cells)
    return markdown_table(["row", "seeds", "Δm % [interval] (share of draws better)", *tasks], rows)


def cost_table(results: Mapping[str, Any]) -> str:
    rows = []
    for label, c in results["cost"].items():
        cells = [f"{c['parameters']:,}", f"{c['latency_ms']:.3f}", f"{c['train_time_s']:.1f}", f"{c['peak_mb']:.0f}"]
        rows.append([label, str(c["models"]), *cells])
    header = ["row", "models served", "parameters", "latency ms / example", "train s (all models)", "peak MB"]
    return markdown_table(header, rows)


def front_lines(results: Mapping[str, Any], plots: Path) -> list[str]:
    """The fixed-weight trade-off front with every balancing method placed on it."""
    front = results.get("front")
    if not front:
        return []
    images = [f"![trade-off front](plots/{p.name})" for p in plot_front(front, plots)]
    return [
        "## Trade-off front (fixed task weights, validation)",
        "",
        f"Non-dominated fixed points: {', '.join(front['front']) or 'none'}.",
        "",
        *images,
        "",
        front_table(front),
        "",
    ]


def group_lines(results: Mapping[str, Any]) -> list[str]:
    if not results["groups"]:
        return ["No task groups: fewer than 3 tasks, or no look-ahead affinity was measured.", ""]
    lines = [
        "Partitions chosen by the look-ahead affinity of the first method's joint runs (TAG score: mean "
        "affinity a task receives from its group-mates), each trained as a row:",
        "",
    ]
    for k, info in results["groups"].items():
        groups = ", ".join("+".join(g) for g in info["groups"])
        lines.append(f"- {k} groups: {groups} (score {info['score']:+.2f} %)")
    return [*lines, ""]


def write_verdict_report(folder: str | Path) -> Path:
    """``report.md`` and ``plots/`` in the verdict folder, from its ``results.json``."""
    folder = Path(folder)
    results = json.loads((folder / "results.json").read_text())
    plots = folder / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plot_forest(results, plots / "forest.png")
    lines = [
        "# Verdict: together or apart",
        "",
        paragraph(results),
        "",
        "## Intervals: row − each task alone (test)",
        "",
        "![forest plot](plots/forest.png)",
        "",
        interval_table(results),
        "",
        *front_lines(results, plots),
        "## Task groups",
        "",
        *group_lines(results),
        "## Cost",
        "",
        f"Latency: median of single-example forwards on `{results['spec']['device']}`, summed over the models a "
        "row serves; training time summed over them (mean over seeds); peak memory of the largest run.",
        "",
        cost_table(results),
        "",
        "## The comparison (mean ± std over seeds)",
        "",
        format_table(results["comparison"] | {"spec": results["spec"]["compare"]}),
        "",
    ]
    path = folder / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
