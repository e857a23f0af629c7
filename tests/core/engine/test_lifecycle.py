"""The run lifecycle: a run without a directory writes nothing, best/ has one writer, the report is written once."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

import core.reports.run_report
from core.experiments.builder import Experiment
from core.experiments.run import train
from core.model import JointModel
from core.rundir.directory import RunDir

from ..helpers import build_trainer, toy_config


def test_a_run_without_a_directory_writes_nothing_and_refuses_to_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = toy_config(tmp_path / "elsewhere", **{"train.max_steps": 10, "train.eval_every": 5})
    trainer = build_trainer(config, out_dir=None)
    summary = trainer.fit()
    assert summary["status"] == "completed" and summary["best_score"] == trainer.checkpoints.best_score
    assert summary["best_val"] and trainer.run is None
    assert os.listdir(tmp_path) == []
    with pytest.raises(Exception, match="resume needs an out_dir"):
        build_trainer(config, out_dir=None).fit(resume=True)


def test_without_a_validation_split_the_final_model_is_the_best(tmp_path):
    config = toy_config(tmp_path, **{"train.max_steps": 10, "train.eval_every": 0})
    experiment = Experiment(config)
    experiment.trainer(data=dataclasses.replace(experiment.data, val=[])).fit()
    run = RunDir(config.output_dir)
    best, final = JointModel.from_pretrained(run.model("best")), JointModel.from_pretrained(run.model("final"))
    assert all(torch.equal(v, final.state_dict()[k]) for k, v in best.state_dict().items())
    assert not list(run.checkpoints.glob("best-*.pt"))  # no score: no best checkpoint, only last.pt
    card = (run.model("best") / "README.md").read_text()
    assert "test" in card  # the card was rewritten once the test split was scored


def test_the_report_is_written_once_when_a_finetune_stage_follows(tmp_path, monkeypatch):
    written = []
    original = core.reports.run_report.write_report

    def counting(run_dir):
        written.append(run_dir)
        return original(run_dir)

    monkeypatch.setattr(core.reports.run_report, "write_report", counting)
    overrides = {"train.max_steps": 6, "report.enabled": True, "report.affinity_batches": 0}
    train(toy_config(tmp_path, **overrides, finetune={"mode": "head", "steps": 2}))
    assert len(written) == 1
    assert "finetune" in RunDir(tmp_path / "run").results()


def test_every_validation_reaches_the_lifecycle_with_its_step_score_and_results(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.max_steps": 20, "train.eval_every": 5}), out_dir=None)
    seen = []
    validated = trainer.life.validated
    trainer.life.validated = lambda step, score, results: seen.append((step, score)) or validated(step, score, results)
    trainer.fit()
    assert [step for step, _ in seen] == [5, 10, 15, 20]
    assert max(score for _, score in seen) == trainer.checkpoints.best_score
