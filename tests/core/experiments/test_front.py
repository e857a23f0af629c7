"""The trade-off front: weight design, the non-dominated filter, step times, and a real 2-task front."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import ConfigError
from core.experiments.compare import CompareSpec, plan
from core.experiments.front import (
    FrontSpec,
    non_dominated,
    place,
    plan_front,
    step_time,
    trade_off_front,
    weight_design,
)

from ..helpers import toy_config


def brute_force_front(values: np.ndarray) -> list[bool]:
    """Row i is kept unless some row is >= in every column and > in at least one (higher is better)."""
    keep = []
    for i in range(len(values)):
        dominated = False
        for j in range(len(values)):
            at_least = all(values[j][c] >= values[i][c] for c in range(values.shape[1]))
            better = any(values[j][c] > values[i][c] for c in range(values.shape[1]))
            dominated = dominated or (at_least and better)
        keep.append(not dominated)
    return keep


@pytest.mark.parametrize("seed", range(30))
def test_non_dominated_matches_brute_force_on_ties_and_duplicates(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 13)), int(rng.integers(2, 5))
    values = rng.integers(0, 3, size=(n, k)).astype(float)  # three levels: many ties and duplicate rows
    if n > 2:
        values[-1] = values[0]  # at least one exact duplicate
    assert non_dominated(values).tolist() == brute_force_front(values)


def test_duplicates_on_the_front_are_all_kept_and_a_tie_does_not_dominate() -> None:
    values = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0], [0.5, 1.0]])
    assert non_dominated(values).tolist() == [False, False, False, True, True, False]
    assert non_dominated(np.array([[0.3, 0.3]])).tolist() == [True]


def test_place_orients_lower_is_better_metrics() -> None:
    points = [
        {"label": "a", "kind": "fixed", "val": {"acc": 0.9, "mae": 2.0}},
        {"label": "b", "kind": "fixed", "val": {"acc": 0.9, "mae": 1.0}},  # lower error: dominates a
        {"label": "c", "kind": "fixed", "val": {"acc": 0.95, "mae": 3.0}},
        {"label": "m", "kind": "method", "val": {"acc": 0.9, "mae": 1.5}},
    ]
    place(points, ["acc", "mae"], {"acc": True, "mae": False})
    assert [p["on_front"] for p in points] == [False, True, True, False]
    assert points[0]["dominated_by"] == ["b"] and points[3]["dominated_by"] == ["b"]


def test_weight_design_for_two_tasks_is_an_even_line_with_both_ends() -> None:
    design = weight_design(["a", "b"], 5)
    assert [w["a"] for w in design] == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(w["a"] + w["b"] == pytest.approx(2.0) for w in design)


@pytest.mark.parametrize("k", [3, 5, 8])
def test_the_simplex_design_sums_to_k_holds_vertices_and_centre_and_spreads(k: int) -> None:
    tasks = [f"t{i}" for i in range(k)]
    design = weight_design(tasks)
    matrix = np.array([[w[t] for t in tasks] for w in design])
    assert len(design) == 5 * k and (matrix >= 0).all()
    np.testing.assert_allclose(matrix.sum(1), k, atol=1e-5)
    assert len({tuple(row) for row in matrix.round(6)}) == len(design)  # no point twice
    for i in range(k):
        assert any(row[i] == k for row in matrix)  # vertex: task i alone
    assert any(np.allclose(row, 1.0) for row in matrix)  # equal weights
    # evenly spread: every task's weight takes low, middle and high values among the interior points
    interior = matrix[k + 1 :]
    assert (interior.min(0) < 0.35 * k / 2).all() and (interior.max(0) > 1.2).all()


def test_bad_front_specs_are_refused() -> None:
    with pytest.raises(ConfigError, match="at least two tasks"):
        weight_design(["a"])
    with pytest.raises(ConfigError, match=r"front\.points must be >= 5"):
        weight_design(["a", "b", "c"], 4)
    with pytest.raises(ConfigError, match="lr_scales"):
        plan_front(toy_config(Path("/nonexistent")), FrontSpec(lr_scales=[1.0, -2.0]))


def test_step_time_skips_intervals_with_a_validation_or_a_resume(tmp_path: Path) -> None:
    records = [
        {"split": "train", "step": 5, "time": 1.0},
        {"split": "train", "step": 10, "time": 2.0},  # 0.2 s/step
        {"split": "val", "step": 10},
        {"split": "train", "step": 15, "time": 9.0},  # spans the validation: left out
        {"split": "train", "step": 20, "time": 10.5},  # 0.3 s/step
        {"split": "resume", "step": 20},
        {"split": "train", "step": 25, "time": 0.5},  # the clock restarted: left out
        {"split": "train", "step": 30, "time": 1.5},  # 0.2 s/step
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert step_time(tmp_path) == pytest.approx(0.2)
    assert step_time(tmp_path / "missing") is None


def test_the_front_on_two_tasks_is_monotone_with_equal_budgets_and_methods_placed(tmp_path: Path) -> None:
    base = toy_config(tmp_path, **{"train.max_steps": 30, "train.eval_every": 10, "model.backbone.hidden": [16]})
    spec = FrontSpec(points=7, lr_scales=[0.5, 2.0], methods=["ew", "uw"])
    lines: list[str] = []
    result = trade_off_front(base, spec, log=lambda line: lines.append(str(line)))

    points = {p["label"]: p for p in result["points"]}
    assert len(points) == 7 + 2
    assert result["budget"]["runs"] == 9 * 2 and result["budget"]["runs_per_point"] == 2
    for p in points.values():  # every row searched the same rates and kept its best on validation
        assert set(p["scores"]) == {"0.5", "2"}
        assert p["scores"][f"{p['lr_scale']:g}"] == max(p["scores"].values())
        assert p["step_time_s"] > 0
    # along the front (both metrics higher-is-better accuracies), improving one task never improves the other
    front = sorted((points[label]["val"]["digit"], points[label]["val"]["parity"]) for label in result["front"])
    assert len(front) >= 1
    for (_, p0), (_, p1) in itertools.pairwise(front):  # sorted by digit: parity may only fall (or tie)
        assert p1 <= p0
    for p in points.values():  # off the front means dominated by a front point, and only then
        assert p["on_front"] == (not p["dominated_by"])
    assert (tmp_path / "run" / "front" / "front.json").is_file()

    lines.clear()  # a rerun trains nothing and gives the same answer
    assert trade_off_front(base, spec, log=lambda line: lines.append(str(line))) == result
    assert not any("[train]" in line for line in lines)


def test_a_method_at_the_configs_rate_is_compares_own_joint_run(tmp_path: Path) -> None:
    base = toy_config(tmp_path)
    joint = {r.dir: r.config for r in plan(base, CompareSpec(methods=["uw"], seeds=2)) if r.kind == "joint"}
    shared = [
        (scale, run) for row, scale, run in plan_front(base, FrontSpec(seeds=2, methods=["uw"])) if row.kind == "method"
    ]
    assert len(shared) == 3 * 2
    for scale, run in shared:
        assert (run.dir in joint) == (scale == 1.0)
        if scale == 1.0:
            assert run.config.to_dict() == joint[run.dir].to_dict()  # compare's execute reuses it as it is
        else:
            assert run.config.train.lr == pytest.approx(base.train.lr * scale)
