"""The front's drawing: a curve for two tasks, pairwise projections for more, and the table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.experiments.front import place, weight_design
from core.experiments.front_plot import front_table, plot_front


def synthetic_front(tasks: list[str]) -> dict:
    """A front.json-shaped result: fixed points on a concave trade-off, two methods."""
    rng = np.random.default_rng(0)
    points = [
        {
            "label": f"p{i}",
            "kind": "fixed",
            "weights": w,
            "lr": 1e-3,
            "step_time_s": 0.01,
            "val": {t: float(np.sqrt(w[t] / len(tasks)) - 0.05 * rng.random()) for t in tasks},
        }
        for i, w in enumerate(weight_design(tasks))
    ]
    points.append(
        {"label": "worse", "kind": "fixed", "lr": 1e-3, "step_time_s": 0.01, "val": dict.fromkeys(tasks, -1.0)}
    )
    points += [
        {
            "label": m,
            "kind": "method",
            "method": {"name": m},
            "lr": 2e-3,
            "step_time_s": t,
            "val": {task: 0.5 for task in tasks},
        }
        for m, t in (("ew", 0.01), ("upgrad", None))
    ]
    hib = dict.fromkeys(tasks, True)
    place(points, tasks, hib)
    budget = {"text": "2 learning rates x 1 seed"}
    return {
        "tasks": tasks,
        "metrics": dict.fromkeys(tasks, "accuracy"),
        "higher_is_better": hib,
        "budget": budget,
        "points": points,
    }


@pytest.mark.parametrize("k", [2, 4])
def test_plot_and_table_show_every_point(tmp_path: Path, k: int) -> None:
    pytest.importorskip("matplotlib")
    result = synthetic_front([f"task{i}" for i in range(k)])
    (path,) = plot_front(result, tmp_path / "plots")
    assert path.is_file() and path.stat().st_size > 10_000
    table = front_table(result)
    for p in result["points"]:
        assert f"| {p['label']} |" in table
    assert "on the front" in table and "dominated by" in table
    assert table.splitlines()[2].startswith("| ew |")  # methods first
    assert table.endswith("Budget: 2 learning rates x 1 seed.")
