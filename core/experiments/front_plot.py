"""Drawing the trade-off front (``front.json``): a curve for two tasks, pairwise projections for more,
and a table of every point."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..engine.report import pyplot

MARKERS = ["*", "D", "^", "v", "P", "X", "s", "h"]


def axis_label(result: Mapping[str, Any], task: str) -> str:
    arrow = "higher" if result["higher_is_better"][task] else "lower"
    return f"{task} {result['metrics'][task]} (val, {arrow} is better)"


def method_label(point: Mapping[str, Any]) -> str:
    time = point.get("step_time_s")
    return f"{point['label']} ({time * 1e3:.3g} ms/step)" if time is not None else point["label"]


def draw(ax: Any, result: Mapping[str, Any], x: str, y: str, legend: bool) -> None:
    """One projection: every fixed point, the front joined in order, the methods as markers."""
    fixed = [p for p in result["points"] if p["kind"] == "fixed"]
    ax.scatter(
        [p["val"][x] for p in fixed], [p["val"][y] for p in fixed], s=18, color="tab:grey", label="fixed weights"
    )
    front = sorted((p for p in fixed if p["on_front"]), key=lambda p: p["val"][x])
    ax.plot(
        [p["val"][x] for p in front], [p["val"][y] for p in front], "-o", color="black", markersize=5, label="front"
    )
    methods = [p for p in result["points"] if p["kind"] == "method"]
    for i, p in enumerate(methods):
        ax.scatter(p["val"][x], p["val"][y], s=90, marker=MARKERS[i % len(MARKERS)], zorder=3, label=method_label(p))
    ax.set_xlabel(axis_label(result, x), fontsize=8)
    ax.set_ylabel(axis_label(result, y), fontsize=8)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best")


def plot_front(result: Mapping[str, Any], out_dir: str | Path) -> list[Path]:
    """``front.png``: for two tasks the front as a curve; for more, every pair of tasks (a projection:
    the front's points are non-dominated over all tasks, not necessarily in each pair)."""
    plt = pyplot()
    tasks = result["tasks"]
    pairs = list(itertools.combinations(tasks, 2))
    cols = min(3, len(pairs))
    rows = -(-len(pairs) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
    for i, (x, y) in enumerate(pairs):
        draw(axes[i // cols][i % cols], result, x, y, legend=i == 0)
    for j in range(len(pairs), rows * cols):
        axes[j // cols][j % cols].axis("off")
    title = "Trade-off front of fixed task weights (validation)"
    fig.suptitle(title if len(tasks) == 2 else f"{title}: pairwise projections", fontsize=10)
    fig.tight_layout()
    path = Path(out_dir) / "front.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def front_table(result: Mapping[str, Any]) -> str:
    """Markdown: every point's validation metrics, learning rate, step time and place on the front."""
    tasks = result["tasks"]
    head = ["point", *(f"{t} {result['metrics'][t]}" for t in tasks), "lr", "ms/step", "front"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(result["points"], key=lambda p: (p["kind"] != "method", not p["on_front"])):
        time = f"{p['step_time_s'] * 1e3:.3g}" if p.get("step_time_s") is not None else "-"
        if p["on_front"]:
            place = "on the front"
        else:
            place = "dominated by " + ", ".join(p["dominated_by"][:3]) + ("…" if len(p["dominated_by"]) > 3 else "")
        cells = [p["label"], *(f"{p['val'][t]:.4f}" for t in tasks), f"{p['lr']:.3g}", time, place]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, "", f"Budget: {result['budget']['text']}."])
