"""Run reports (report.md + PNG plots), task affinity, and the train-split evaluation behind the gap."""

from __future__ import annotations

import json
import math

import pytest
import torch

import core.reports.run_report
from core.cli import main
from core.data import DataBundle, Loading
from core.engine.affinity import lookahead_affinity
from core.errors import CheckpointError
from core.experiments.builder import Experiment, restrict_tasks
from core.experiments.run import train
from core.reports.affinity import cosine_affinity, parse_cosine_key, suggest_groups
from core.reports.run_report import write_report

from ..helpers import toy_config

PNG = b"\x89PNG\r\n\x1a\n"


def test_training_writes_a_report_with_plots_gap_and_affinity(tmp_path):
    config = toy_config(
        tmp_path, **{"train.max_steps": 6, "train.eval_every": 3, "train.log_every": 2, "report.enabled": True}
    )
    result = train(config)
    run = tmp_path / "run"
    # the gap needs train-split metrics of the best model; affinity a look-ahead on training batches
    assert set(result["train"]) == {"digit", "parity"} and 0 <= result["train"]["digit"]["accuracy"] <= 1
    matrix = result["affinity"]["matrix"]
    assert set(matrix) == {"digit", "parity"} and all(math.isfinite(v) for row in matrix.values() for v in row.values())
    assert matrix["digit"]["digit"] > 0  # a step on a task's own loss lowers it
    assert result["higher_is_better"]["digit"] == {"accuracy": True, "f1_macro": True, "loss": False}
    report = (run / "report.md").read_text()
    for heading in ("Training and validation curves", "Task weights", "Final metrics", "Train–validation gap"):
        assert heading in report
    assert "| digit | accuracy |" in report and "Suggested groups" in report
    for name in ("curves", "weights", "gap", "affinity_lookahead"):
        assert (run / "plots" / f"{name}.png").read_bytes()[:8] == PNG
        assert f"plots/{name}.png" in report

    # jointtrain report RUN regenerates it from the directory alone
    (run / "report.md").unlink()
    assert main(["report", str(run)]) == 0
    assert (run / "report.md").read_text() == report


def test_report_failure_warns_but_never_fails_the_training(tmp_path, monkeypatch):
    def broken(run_dir):
        raise RuntimeError("no plotting today")

    monkeypatch.setattr(core.reports.run_report, "write_report", broken)
    config = toy_config(
        tmp_path,
        **{"train.max_steps": 2, "report.enabled": True, "report.affinity_batches": 0, "report.train_eval_samples": 0},
    )
    with pytest.warns(RuntimeWarning, match="report .* not written: RuntimeError: no plotting today"):
        result = train(config)
    assert result["status"] == "completed" and (tmp_path / "run" / "results.json").is_file()
    assert "train" not in result and "affinity" not in result  # both switched off


def test_logged_gradient_cosines_are_plotted_and_grouped(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("tasks: {a/x: {}, b: {}, c: {}}\nbalancing: {name: upgrad}\n")
    records = [{"split": "setup", "step": 0, "device": "cpu"}]
    for step in range(1, 6):
        # both key formats: 'cos/a|b' and 'cos/a/b' (task names may contain '/')
        records.append(
            {"split": "train", "step": step, "cos/a/x|b": 0.5, "cos/a/x/c": -0.4, "cos/b/c": -0.2, "weight/b": 1.0}
        )
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n{torn")
    write_report(run)
    report = (run / "report.md").read_text()
    assert "Suggested groups (mean cosine > 0): {a/x, b}, {c}" in report
    assert (run / "plots" / "cosines.png").read_bytes()[:8] == PNG
    assert (run / "plots" / "affinity_cosine.png").read_bytes()[:8] == PNG


def test_affinity_helpers():
    tasks = ["a/x", "b", "c"]
    assert parse_cosine_key("cos/a/x/b", tasks) == ("a/x", "b")
    assert parse_cosine_key("cos/a/x|c", tasks) == ("a/x", "c")
    assert parse_cosine_key("cos/a/zz", tasks) is None and parse_cosine_key("loss/b", tasks) is None
    matrix = cosine_affinity([{"cos/b/c": 0.2}, {"cos/b/c": 0.4}], tasks)
    assert matrix["c"]["b"] == pytest.approx(0.3) and matrix["b"]["b"] == 1.0 and math.isnan(matrix["a/x"]["b"])
    assert cosine_affinity([{"loss/b": 1.0}], tasks) is None
    z = {"p": {"p": 9, "q": 3, "r": -1}, "q": {"p": 1, "q": 9, "r": -2}, "r": {"p": -1, "q": -1, "r": 9}}
    assert suggest_groups(z) == [["p", "q"], ["r"]]
    assert suggest_groups(z, threshold=5) == [["p"], ["q"], ["r"]]


def test_lookahead_affinity_restores_the_model(tmp_path):
    config = toy_config(tmp_path)
    data = Experiment(config).data
    model = Experiment(config).model(data)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    result = lookahead_affinity(model, data.train, Loading(batch_size=32), batches=2, lr=0.01)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["batches"] == 2 and result["matrix"]["parity"]["parity"] > 0


def test_config_may_train_a_subset_of_the_tasks_the_data_labels(tmp_path):
    data = Experiment(toy_config(tmp_path, **{"data.regime": "per_task"})).data
    only = restrict_tasks(data, ["parity"])
    assert isinstance(only, DataBundle)
    assert [s.tasks for s in only.train] == [["parity"]] and [s.tasks for s in only.val] == [["parity"]]


def test_report_of_something_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(CheckpointError, match=r"not a run directory: it has no metrics\.jsonl"):
        write_report(tmp_path)
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_moe_gates_are_plotted_and_hard_sharing_has_no_gate_section(tmp_path):
    overrides = {"train.max_steps": 4, "train.eval_every": 4, "train.log_every": 1, "report.enabled": True}
    mmoe = toy_config(tmp_path / "mmoe", **overrides, **{"model.architecture": {"name": "mmoe", "n_experts": 3}})
    train(mmoe)
    report = (tmp_path / "mmoe" / "run" / "report.md").read_text()
    assert "## Mixture-of-experts gates" in report
    assert (tmp_path / "mmoe" / "run" / "plots" / "gates.png").read_bytes()[:8] == PNG
    keys = core.reports.run_report.gate_keys(core.reports.run_report.load_run(tmp_path / "mmoe" / "run"))
    experts = {f"gate/digit/expert{i}": f"expert{i}" for i in range(3)}
    assert keys["digit"] == {"gate/digit/entropy": "entropy", **experts}

    train(toy_config(tmp_path / "hard", **overrides))
    assert "Mixture-of-experts" not in (tmp_path / "hard" / "run" / "report.md").read_text()


def test_recorded_baselines_fill_the_report_with_their_delta_m(tmp_path):
    from core.evaluation import delta_m
    from core.reports.run_report import record_baselines
    from core.rundir.directory import RunDir

    train(toy_config(tmp_path, **{"train.max_steps": 4, "train.eval_every": 4, "report.enabled": True}))
    run = tmp_path / "run"
    assert "No baselines" in (run / "report.md").read_text()
    lexicon = {"digit": {"accuracy": 0.5, "params": {"C": 1.0}}}  # non-numeric details are left out
    majority = {"parity": {"accuracy": 0.5, "f1_macro": 0.33}}
    record_baselines(run, {"lexicon": lexicon, "majority": majority, "copy": {"digit": {"accuracy": 0.0}}})
    ev = RunDir(run).summary()
    assert ev["baselines"]["lexicon"] == {"digit": {"accuracy": 0.5}}
    report = (run / "report.md").read_text()
    assert "| task | metric | test | lexicon | majority | copy |" in report
    assert f"| digit | accuracy | {ev['tasks']['digit']['accuracy']:.4f} | 0.5000 | – | 0.0000 |" in report
    gain = delta_m(ev["tasks"], {"digit": {"accuracy": 0.5}}, ev["higher_is_better"])
    assert f"Δm against `lexicon` (tasks digit): **{gain:+.2f}%**" in report
    assert "No baselines" not in report
    assert "Δm against `copy`: undefined, its shared metrics are all 0." in report  # no relative change from 0


def test_delta_m_against_the_first_validation_is_not_called_a_baseline(tmp_path):
    """Periodic validation without config baselines: selection's reference is the first validation result,
    and the Δm the trainer records against it is no baseline comparison."""
    train(toy_config(tmp_path, **{"train.max_steps": 4, "train.eval_every": 2, "report.enabled": True}))
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Δm against the baselines" not in report and "No baselines" in report
