"""jointtrain compare: single-task vs joint runs over seeds, Δm, resume/skip, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.cli import main
from core.config import dump_config
from core.errors import ConfigError
from core.evaluation import delta_m
from core.experiments.compare import SINGLE, CompareSpec, compare, method_label, plan, read_compare_config, summarise
from core.rundir.directory import RunDir

from ..helpers import toy_config


def write_config(tmp_path: Path, compare_section: dict[str, Any], **overrides: Any) -> Path:
    base = toy_config(
        tmp_path,
        **{
            "train.max_steps": 4,
            "train.eval_every": 2,
            "model.backbone.hidden": [16],
            "report.enabled": False,
            "report.affinity_batches": 1,
            **overrides,
        },
    )
    raw = {**yaml.safe_load(dump_config(base)), "compare": compare_section}
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_compare_trains_every_row_computes_delta_m_and_skips_finished_runs(tmp_path, capsys):
    path = write_config(tmp_path, {"methods": [{"name": "ew", "heuristic": "uniform"}], "seeds": 2})
    base, spec = read_compare_config(path)
    summary = compare(base, spec)

    assert list(summary["rows"]) == [SINGLE, "ew(heuristic=uniform)"]
    assert all(row["seeds"] == 2 for row in summary["rows"].values())
    assert len(summary["runs"]) == 2 * (2 + 1)
    # single-task runs train one task on that task's data only
    single = [r for r in summary["runs"] if r["row"] == SINGLE]
    for r in single:
        ev = RunDir(Path(r["dir"])).summary()
        assert list(ev["tasks"]) == [r["task"]]
        assert yaml.safe_load((Path(r["dir"]) / "config.yaml").read_text())["tasks"].keys() == {r["task"]}

    # Δm recomputed by hand from the runs' own results.json files
    def test_metrics(row: str, seed: int) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for r in summary["runs"]:
            if r["row"] == row and r["seed"] == seed:
                out.update(RunDir(Path(r["dir"])).summary()["tasks"])
        return out

    baselines = {
        t: {m: (test_metrics(SINGLE, 0)[t][m] + test_metrics(SINGLE, 1)[t][m]) / 2 for m in ("accuracy", "f1_macro")}
        for t in ("digit", "parity")
    }
    assert summary["baselines"]["digit"]["accuracy"] == pytest.approx(baselines["digit"]["accuracy"])
    hib = {t: {"accuracy": True, "f1_macro": True, "loss": False} for t in baselines}
    expected = [delta_m(test_metrics("ew(heuristic=uniform)", s), baselines, hib) for s in (0, 1)]
    mean, std = summary["rows"]["ew(heuristic=uniform)"]["delta_m"]
    assert mean == pytest.approx(sum(expected) / 2)
    assert std == pytest.approx(abs(expected[0] - expected[1]) / math.sqrt(2))
    assert summary["best_overall"] == "ew(heuristic=uniform)"
    assert set(summary["best_per_task"]) == {"digit", "parity"}
    for row in summary["rows"].values():
        assert row["peak_rss_mb"] > 0 and row["train_time_s"][0] > 0
        assert set(row["gap"]) == set(row["metrics"])  # train-split metrics were recorded
    assert (tmp_path / "run" / "compare.json").is_file()

    # second call: every run is finished and skipped; a run that lost its results.json is resumed
    victim = Path(summary["runs"][-1]["dir"])
    (victim / "results.json").unlink()
    capsys.readouterr()
    again = compare(base, spec)
    out = capsys.readouterr().out
    assert out.count("[done]") == len(summary["runs"]) - 1
    assert f"[resume]   {victim}" in out
    as_json = json.loads(json.dumps(summary["rows"][SINGLE]["metrics"]))
    assert json.loads(json.dumps(again["rows"][SINGLE]["metrics"])) == as_json


def test_compare_report_and_cli(tmp_path, capsys):
    path = write_config(
        tmp_path,
        {"methods": ["ew"], "seeds": 1, "variants": {"wd0": ["train.weight_decay=0.0"]}},
        **{"report.enabled": True},
    )
    assert main(["compare", str(path), "--methods", "uw", "--set", "train.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "| single-task | 1 |" in out and "| uw | 1 |" in out and "| wd0 | 1 |" in out
    assert "| ew | 1 |" not in out  # --methods replaced the config's list
    root = tmp_path / "run"
    report = (root / "report.md").read_text()
    assert "Δm" in report and "train − validation gap" in report and "look-ahead" in report
    for name in ("metrics", "delta_m", "val_curves", "gap", "affinity_lookahead"):
        png = root / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    # every run of the comparison wrote its own report too
    assert (root / "joint" / "uw" / "seed0" / "report.md").is_file()
    (root / "report.md").unlink()
    assert main(["report", str(root)]) == 0
    assert (root / "report.md").is_file()


def test_summarise_delta_m_signs_follow_higher_is_better():
    spec_runs = plan(
        toy_config(Path("/nonexistent"), **{"train.max_steps": 1}),
        CompareSpec(methods=["ew"], seeds=1),
    )
    hib = {"digit": {"accuracy": True, "loss": False}, "parity": {"mae": False, "loss": False}}
    cost = {"train_time_s": 1.0, "peak_rss_mb": 1.0}
    results = [
        {
            "tasks": {"digit": {"accuracy": 0.8, "loss": 1.0}},
            "val": {"digit": {"accuracy": 0.5, "loss": 1.0}},
            "higher_is_better": hib,
            "cost": cost,
            "parameters": 10,
        },
        {
            "tasks": {"parity": {"mae": 0.5, "loss": 1.0}},
            "val": {"parity": {"mae": 0.5, "loss": 1.0}},
            "higher_is_better": hib,
            "cost": cost,
            "parameters": 20,
        },
        {
            "tasks": {"digit": {"accuracy": 0.88, "loss": 0.1}, "parity": {"mae": 0.4, "loss": 9.0}},
            "val": {"digit": {"accuracy": 0.4, "loss": 0.1}, "parity": {"mae": 0.5, "loss": 9.0}},
            "cost": cost,
            "parameters": 25,
        },
    ]
    summary = summarise(spec_runs, results, ["digit", "parity"])
    # digit +10 %, parity mae 0.5 -> 0.4 is +20 % (lower is better); loss is not a metric for Δm
    assert summary["rows"]["ew"]["delta_m"][0] == pytest.approx(15.0)
    assert summary["rows"]["ew"]["delta_m_by_budget"] == {"steps": summary["rows"]["ew"]["delta_m"]}
    # validation: digit -20 %, parity unchanged
    assert summary["rows"]["ew"]["val_delta_m"][0] == pytest.approx(-10.0)
    assert summary["rows"][SINGLE]["parameters"] == 30 and summary["rows"]["ew"]["parameters"] == 25
    assert summary["best_per_task"] == {
        "digit": {"row": "ew", "metric": "accuracy"},
        "parity": {"row": "ew", "metric": "mae"},
    }


def test_method_labels():
    assert method_label("uw") == "uw"
    assert method_label({"name": "ew", "heuristic": "size"}) == "ew(heuristic=size)"


@pytest.mark.parametrize(
    ("section", "overrides", "message"),
    [
        ({"methods": ["ew"], "seeds": 0}, {}, "seeds must be >= 1"),
        ({"methods": ["ew", "uww"]}, {}, "unknown balancing method 'uww'. Did you mean 'uw'"),
        ({"methods": [{"name": "ew", "heuristc": "size"}]}, {}, "unknown argument 'heuristc'"),
        ({"methods": []}, {}, "compare.methods is empty"),
        ({"method": ["ew"]}, {}, "unknown key 'compare.method'"),
    ],
)
def test_bad_compare_config(tmp_path, section, overrides, message):
    path = write_config(tmp_path, section, **overrides)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_compare_config(path)


def test_one_task_is_refused_with_a_clear_message(tmp_path, capsys):
    base = yaml.safe_load(dump_config(toy_config(tmp_path)))
    base["tasks"] = {"digit": base["tasks"]["digit"]}
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({**base, "compare": {"methods": ["ew"]}}))
    assert main(["compare", str(path)]) == 2
    assert "compare needs at least two tasks" in capsys.readouterr().err


def test_run_directory_of_another_config_is_refused_before_training(tmp_path):
    path = write_config(tmp_path, {"methods": ["ew"], "seeds": 1})
    base, spec = read_compare_config(path)
    stale = plan(base, spec)[-1]
    stale.dir.mkdir(parents=True)
    changed = toy_config(tmp_path, **{"train.lr": 0.5, "output_dir": str(stale.dir)})
    (stale.dir / "config.yaml").write_text(dump_config(changed))
    with pytest.raises(ConfigError, match=r"made by a config with different .*train.*delete that directory"):
        compare(base, spec)
    assert not (Path(plan(base, spec)[0].dir) / "config.yaml").exists()  # nothing was trained


def test_compare_has_an_architecture_axis(tmp_path):
    from core.experiments.compare import plan

    path = write_config(
        tmp_path,
        {"methods": ["ew"], "seeds": 1, "architectures": ["hard", {"name": "branched", "branch_point": 0}]},
    )
    base, spec = read_compare_config(path)
    rows = {run.label: run.config.model.architecture for run in plan(base, spec) if run.kind == "joint"}
    assert rows == {
        "ew": {"name": "hard"},
        "arch=hard": {"name": "hard"},
        "arch=branched(branch_point=0)": {"name": "branched", "branch_point": 0},
    }


def test_bad_budget_is_refused(tmp_path):
    path = write_config(tmp_path, {"methods": ["ew"], "budgets": ["steps", "exampels"]})
    with pytest.raises(ConfigError, match=r"compare.budgets must list distinct budgets of \['examples', 'steps'\]"):
        read_compare_config(path)


def test_examples_budget_is_what_each_task_received_in_the_joint_run(tmp_path):
    """One dataset per task and a uniform sampler: each task alone gets the steps the joint run gave it,
    counted here from the joint run's own log (one train record per step, a loss per drawn task)."""
    from core.experiments.run import train
    from core.rundir.metrics_log import read_jsonl

    overrides = {"data.regime": "per_task", "sampler.name": "uniform", "train.max_steps": 12, "train.log_every": 1}
    path = write_config(tmp_path, {"methods": ["ew"], "seeds": 1, "budgets": ["steps", "examples"]}, **overrides)
    base, spec = read_compare_config(path)
    singles = {(run.budget, run.task): run.config.train.max_steps for run in plan(base, spec) if run.kind == "single"}

    joint = toy_config(tmp_path, **{**overrides, "output_dir": str(tmp_path / "joint")})
    train(joint)
    records = [r for r in read_jsonl(tmp_path / "joint" / "metrics.jsonl") if r.get("split") == "train"]
    received = {t: sum(f"loss/{t}" in r for r in records) for t in ("digit", "parity")}
    assert len(records) == 12 and sum(received.values()) == 12 and min(received.values()) > 0
    assert singles == {
        ("steps", "digit"): 12,
        ("steps", "parity"): 12,
        ("examples", "digit"): received["digit"],
        ("examples", "parity"): received["parity"],
    }


def test_two_budgets_give_two_delta_m_columns_and_coincide_when_every_task_is_in_every_batch(tmp_path):
    section = {"methods": ["ew"], "seeds": 1, "budgets": ["steps", "examples"]}
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    per_task = write_config(tmp_path / "a", section, **{"data.regime": "per_task", "sampler.name": "uniform"})
    base, spec = read_compare_config(per_task)
    summary = compare(base, spec)
    examples = f"{SINGLE} (examples)"
    assert list(summary["rows"]) == [SINGLE, examples, "ew"]
    assert summary["rows"][examples]["budget"] == "examples"
    assert set(summary["rows"]["ew"]["delta_m_by_budget"]) == {"steps", "examples"}
    assert summary["spec"]["budgets"]["examples"]["same_as"] is None
    assert all(Path(r["dir"]).parent.name == "examples" for r in summary["runs"] if r["row"] == examples)

    shared = write_config(tmp_path / "b", section)  # one shared dataset, sampler 'all'
    base, spec = read_compare_config(shared)
    assert {run.budget for run in plan(base, spec) if run.kind == "single"} == {"steps"}
    summary = compare(base, spec)
    assert summary["spec"]["budgets"]["examples"] == {"steps": {"digit": 4, "parity": 4}, "same_as": "steps"}
    assert set(summary["rows"]["ew"]["delta_m_by_budget"]) == {"steps"}
    from core.experiments.compare_report import budget_lines

    assert "the same as `steps`" in "\n".join(budget_lines(summary))


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[3] / "scripts" / "configs").glob("compare_*.yaml")), ids=str
)
def test_bundled_compare_configs_are_valid(path):
    from core.architectures import ARCHITECTURES

    _, spec = read_compare_config(path)  # methods, budgets and seeds are validated here
    assert {a["name"] for a in spec.architectures} <= set(ARCHITECTURES.names())
