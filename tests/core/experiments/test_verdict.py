"""jointtrain verdict: intervals that see a handicap and no difference where there is none; groups,
cost, report, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from core.cli import main
from core.config import dump_config
from core.data import DATASETS, DataBundle, DictDataset, Source
from core.digits import sklearn_digits
from core.errors import ConfigError
from core.experiments.compare_report import SINGLE
from core.experiments.verdict import decide, read_verdict_config, verdict

from ..helpers import toy_config


@DATASETS.register("digits_with_noise")
def digits_with_noise(seed: int = 0) -> DataBundle:
    """Digits plus ``noise``: the digit labels randomly permuted over the examples (nothing to learn)."""
    data = sklearn_digits(tasks=["digit"], seed=seed)
    rng = np.random.default_rng(seed + 10)

    def with_noise(source: Source) -> Source:
        tensors = dict(source.dataset.tensors)
        tensors["noise"] = torch.from_numpy(rng.permutation(tensors["digit"].numpy()))
        return Source(source.name, DictDataset(tensors), [*source.tasks, "noise"])

    return DataBundle(
        train=[with_noise(s) for s in data.train],
        val=[with_noise(s) for s in data.val],
        test=[with_noise(s) for s in data.test],
        backbone_updates=data.backbone_updates,
        extra=data.extra,
    )


def write_config(tmp_path: Path, sections: dict[str, Any], **overrides: Any) -> Path:
    base = toy_config(tmp_path, **{"train.eval_every": 25, "report.affinity_batches": 2, **overrides})
    path = tmp_path / "verdict.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(dump_config(base)), **sections}))
    return path


def test_interval_excludes_zero_for_a_task_trained_beside_shuffled_labels(tmp_path):
    path = write_config(
        tmp_path,
        {
            "compare": {"methods": [{"name": "ew", "weights": {"digit": 1.0, "noise": 4.0}}], "seeds": 2},
            "verdict": {"front": False},
        },
        **{
            "tasks": {
                "digit": {"type": "classification", "num_classes": 10},
                "noise": {"type": "classification", "num_classes": 10},
            },
            "data": {"name": "digits_with_noise"},
            "model.backbone.hidden": [24],
            "train.max_steps": 150,
            "train.early_stopping_patience": 0,
        },
    )
    result = verdict(read_verdict_config(path), log=lambda _: None)
    digit = result["intervals"]["ew(weights={'digit': 1.0, 'noise': 4.0})"]["tasks"]["digit"]
    assert digit["high"] < 0, digit  # the shuffled task takes capacity from the digit task
    assert result["decision"]["tasks"]["digit"] == "worse"


def test_verdict_trains_groups_writes_report_and_reuses_runs(tmp_path, capsys):
    path = write_config(
        tmp_path,
        {
            "compare": {"methods": ["ew"], "seeds": 2},
            "verdict": {"replicates": 30, "groups": [2], "merge": True},
            "front": {"points": 5, "lr_scales": [1.0]},
            "merge": {"methods": ["task_arithmetic"], "lambdas": [0.5, 1.0]},
        },
        **{
            "tasks": {
                "digit": {"type": "classification", "num_classes": 10},
                "parity": {"type": "classification", "num_classes": 2},
                "large": {"type": "classification", "num_classes": 2},
            },
            "data.tasks": ["digit", "parity", "large"],
            "train.max_steps": 20,
            "train.eval_every": 10,
            "report.enabled": True,
            "report.train_eval_samples": 0,
        },
    )
    assert main(["verdict", str(path)]) == 0
    out = capsys.readouterr().out
    assert "**Verdict:" in out and "runs done" in out
    folder = tmp_path / "run" / "verdict"
    result = json.loads((folder / "results.json").read_text())
    group_rows = [r for r in result["intervals"] if r.startswith("groups: ")]
    assert len(group_rows) == 1 and result["groups"]["2"]["groups"]
    assert set(result["intervals"]) == {"ew", "merged", *group_rows}
    assert result["cost"]["merged"]["models"] == 1 and len(result["merged"]) == 2  # one merge per seed
    assert result["front"]["front"] and (folder / "plots" / "front.png").is_file()
    for cost in result["cost"].values():
        assert cost["latency_ms"] > 0 and cost["parameters"] > 0
    assert result["cost"][SINGLE]["models"] == 3 and result["cost"]["ew"]["models"] == 1
    assert result["cost"][group_rows[0]]["models"] == 2
    assert (folder / "report.md").read_text().startswith("# Verdict") and (folder / "plots" / "forest.png").is_file()
    # a rerun trains nothing and gives the same verdict
    assert main(["verdict", str(path)]) == 0
    rerun = capsys.readouterr().out
    assert "[train]" not in rerun and "[done]" in rerun
    assert json.loads((folder / "results.json").read_text())["intervals"] == result["intervals"]
    (folder / "report.md").unlink()
    assert main(["report", str(folder)]) == 0 and (folder / "report.md").is_file()


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"verdict": {"replicates": 5}}, "verdict.replicates must be >= 20"),
        ({"verdict": {"groups": [1]}}, "verdict.groups lists group counts >= 2"),
        ({"compare": {"single_task": False}}, "remove compare.single_task: false"),
        ({"front": {"points": 2}}, "front.points"),
        ({"front": {"lr_scales": []}}, "front.lr_scales"),
        ({"verdict": {"colour": 1}}, "colour"),
    ],
)
def test_bad_verdict_sections_fail_before_training(tmp_path, section, message):
    path = write_config(tmp_path, section)
    with pytest.raises(ConfigError, match=message):
        read_verdict_config(path)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("low", "high", "answer", "task", "cheapest"),
    [
        (1.0, 3.0, "together", "better", "ew"),
        (-3.0, -1.0, "apart", "worse", "groups: a+b, c"),  # ew is worse: the cheapest of the others
        (-1.0, 1.0, "no detectable difference", "no detectable difference", "ew"),
    ],
)
def test_decision_follows_the_validation_choice_and_its_test_interval(low, high, answer, task, cheapest):
    interval = {"estimate": (low + high) / 2, "low": low, "high": high, "p_better": 0.5}
    intervals = {
        "ew": {"delta_m": interval, "tasks": {"a": interval}},
        "groups: a+b, c": {"delta_m": {**interval, "low": 2.0, "high": 4.0}, "tasks": {}},
    }
    costs = {SINGLE: {"latency_ms": 3.0}, "ew": {"latency_ms": 1.0}, "groups: a+b, c": {"latency_ms": 2.0}}
    d = decide({"best_on_validation": "ew"}, intervals, costs, 0.95)
    assert (d["answer"], d["row"], d["tasks"]["a"]) == (
        answer,
        "ew",
        {"together": "better", "apart": "worse"}.get(answer, "no detectable difference"),
    )
    assert d["cheapest_not_worse"] == (cheapest if answer != "apart" else "groups: a+b, c")
    grouped = decide({"best_on_validation": "groups: a+b, c"}, intervals, costs, 0.95)
    assert grouped["answer"] == "groups"
