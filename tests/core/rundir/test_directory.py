"""The run directory never loses or mixes a result: one writer, merged results, honest resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main
from core.data import DictDataset, Source
from core.errors import CheckpointError, ConfigError
from core.experiments.run import train
from core.model import JointModel
from core.reports.run_report import write_report
from core.rundir.checkpoints import CheckpointManager
from core.rundir.directory import RunDir, config_changes
from core.rundir.metrics_log import read_jsonl

from ..helpers import build_trainer, toy_config

ROOT = Path(__file__).resolve().parents[3]


def _config_file(tmp_path: Path, **overrides) -> Path:
    config = toy_config(tmp_path, **overrides)
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(config.to_dict()))  # JSON is YAML
    return path


def test_evaluate_after_train_keeps_every_section_and_report_still_works(tmp_path, capsys):
    config = toy_config(tmp_path, **{"report.enabled": True, "finetune": {"mode": "head", "steps": 2}})
    train(config)
    run = RunDir(config.output_dir)
    before = run.results()
    assert {"run", "models", "affinity", "finetune", "higher_is_better"} <= set(before)
    assert {"val", "test", "train"} <= set(before["models"]["best"])

    assert main(["evaluate", config.output_dir, "--split", "val"]) == 0
    assert main(["evaluate", config.output_dir, "--split", "train", "--model", "final"]) == 0
    after = run.results()
    for key in ("run", "affinity", "finetune", "higher_is_better"):
        assert after[key] == before[key], key
    assert after["models"]["best"]["test"] == before["models"]["best"]["test"]
    assert set(after["models"]["final"]) == {"train"}

    assert main(["report", config.output_dir]) == 0
    report = run.report.read_text()
    assert "status: completed" in report and "Train–validation gap" in report and "look-ahead" in report


def test_a_concurrent_train_is_refused_naming_the_holder(tmp_path):
    config = toy_config(tmp_path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from core.rundir.directory import RunDir\n"
            "with RunDir(sys.argv[1]).writing():\n    print('held', flush=True); time.sleep(60)",
            config.output_dir,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError, match=rf"in use by another process \(pid {holder.pid} on "):
            train(config)
    finally:
        holder.kill()
        holder.wait()
    assert not (Path(config.output_dir) / "metrics.jsonl").exists()


def test_a_dead_writer_lock_is_taken_over_with_a_warning(tmp_path):
    config = toy_config(tmp_path)
    run = RunDir(config.output_dir)
    run.path.mkdir(parents=True)
    run.lock_file.write_text("pid 999999 on elsewhere since 2026-01-01 00:00:00")  # no flock: its process is gone
    with pytest.warns(UserWarning, match="taking over the lock of a process that is gone"):
        train(config)
    assert run.lock_file.read_text() == ""  # released


def test_resume_with_a_changed_lr_is_refused_naming_the_key(tmp_path):
    train(toy_config(tmp_path))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in train\.lr\b"):
        train(toy_config(tmp_path, **{"train.lr": 0.1, "train.max_steps": 40}), resume=True)
    saved = (Path(toy_config(tmp_path).output_dir) / "config.yaml").read_text()
    assert "lr: 0.003" in saved  # the record was not rewritten


def test_resume_may_extend_max_steps_and_records_the_change(tmp_path):
    train(toy_config(tmp_path))
    summary = train(toy_config(tmp_path, **{"train.max_steps": 30, "train.eval_every": 15}), resume=True)
    assert summary["step"] == 30
    records = read_jsonl(Path(toy_config(tmp_path).output_dir) / "metrics.jsonl")
    resume = [r for r in records if r["split"] == "resume"]
    assert resume[0]["changes"] == {"train.eval_every": [10, 15], "train.max_steps": [20, 30]}
    with pytest.raises(ConfigError, match="can only be extended"):
        train(toy_config(tmp_path, **{"train.max_steps": 10}), resume=True)


def test_config_changes_classify_keys():
    saved = {"train": {"lr": 1.0, "log_every": 5, "max_steps": 10}, "model": {"backbone": {"name": "mlp"}}}
    current = {"train": {"lr": 1.0, "log_every": 7, "max_steps": 10}, "model": {"backbone": {"name": "x"}}}
    assert config_changes(saved, current) == ({"train.log_every": [5, 7]}, ["model.backbone"])


def test_interrupt_hint_resumes_exactly_this_run(tmp_path, capsys, monkeypatch):
    from core.engine.trainer import Trainer

    path = _config_file(tmp_path)
    output = tmp_path / "elsewhere"
    original = Trainer.train_step

    def stop_at_step_7(self: Trainer) -> dict:
        record = original(self)
        if self.step == 6:
            self.request_stop()
        return record

    monkeypatch.setattr(Trainer, "train_step", stop_at_step_7)
    assert main(["train", str(path), "--output-dir", str(output), "--set", "train.lr=2e-3"]) == 130
    hint = capsys.readouterr().err.strip().splitlines()[-1]
    command = hint.split("continue with: ", 1)[1].split()
    assert command[0] == "jointtrain" and command[-1] == "--resume"
    monkeypatch.setattr(Trainer, "train_step", original)
    assert main(command[1:]) == 0  # the printed command, as written
    summary = RunDir(output).summary()
    assert summary["status"] == "completed" and summary["step"] == 20
    assert not (tmp_path / "run").exists()  # the config file's own output_dir was never touched


@pytest.mark.parametrize("target", ["best/model.safetensors", "best/preds.json", "checkpoints/preds.json"])
def test_predict_into_a_model_or_checkpoint_folder_is_refused(tmp_path, capsys, target):
    config = toy_config(tmp_path)
    train(config)
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((2, 64), dtype=np.float32))
    weights = (Path(config.output_dir) / "best" / "model.safetensors").read_bytes()
    out = Path(config.output_dir) / target
    assert main(["predict", config.output_dir, str(rows), "--out", str(out)]) == 2
    assert "write predictions elsewhere" in capsys.readouterr().err
    assert (Path(config.output_dir) / "best" / "model.safetensors").read_bytes() == weights
    assert not out.exists() or out.name == "model.safetensors"


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        train(toy_config(tmp_path, **{"report.enabled": True}))
    finally:
        os.umask(old)
    run = Path(toy_config(tmp_path).output_dir)
    for path in [run, run / "best", run / "checkpoints", run / "plots"]:
        assert path.stat().st_mode & 0o777 == 0o755, path
    for path in [
        run / "config.yaml",
        run / "results.json",
        run / "metrics.jsonl",
        run / "report.md",
        run / "best" / "model.safetensors",
        run / "checkpoints" / "last.pt",
    ]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_no_duplicated_records_after_resume(tmp_path):
    config = toy_config(tmp_path, **{"train.log_every": 1})
    trainer = build_trainer(config)
    original = trainer.train_step

    def stop_at_step_13() -> dict:
        record = original()
        if trainer.step == 12:
            trainer.request_stop()
        return record

    trainer.train_step = stop_at_step_13  # type: ignore[method-assign]
    trainer.fit()  # checkpoints at 10 (first evaluation: the best so far) and at 13 (interrupt)
    # as after a kill -9 at step 13: the last checkpoint is step 10's, the log runs on to 13
    os.replace(trainer.run.checkpoints / "best-10.pt", trainer.run.last_checkpoint)
    build_trainer(config).fit(resume=True)
    log = Path(config.output_dir) / "metrics.jsonl"
    steps = [r["step"] for r in read_jsonl(log) if r["split"] == "train"]
    assert steps == list(range(1, 21))
    assert [r["dropped_records"] for r in read_jsonl(log) if r["split"] == "resume"] == [3]


def test_python_api_writes_the_cli_artifacts_and_refuses_a_used_folder(tmp_path):
    config = toy_config(tmp_path, **{"report.enabled": True})
    trainer = build_trainer(config, out_dir=tmp_path / "api")
    trainer.fit()
    for name in ("config.yaml", "metrics.jsonl", "results.json", "report.md", "best", "final", "checkpoints"):
        assert (tmp_path / "api" / name).exists(), name
    assert RunDir(tmp_path / "api").summary()["tasks"].keys() == {"digit", "parity"}
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        build_trainer(config, out_dir=tmp_path / "api").fit()
    assert len([r for r in read_jsonl(tmp_path / "api" / "metrics.jsonl") if r["split"] == "setup"]) == 1


def test_report_works_on_an_api_run(tmp_path):
    trainer = build_trainer(toy_config(tmp_path), out_dir=tmp_path / "api")
    trainer.fit()
    assert "status: completed" in write_report(tmp_path / "api").read_text()


def test_checkpoint_manager_keeps_the_best_n_and_a_resumable_best(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.max_steps": 40, "train.keep_best": 2}))
    trainer.fit()
    manager = trainer.checkpoints
    kept = sorted(p.name for p in trainer.run.checkpoints.glob("best-*.pt"))
    assert kept == sorted(f"best-{step}.pt" for _, step in manager.kept) and len(kept) == 2
    assert manager.kept[0][0] == manager.best_score
    best_state = torch.load(trainer.run.checkpoints / f"best-{manager.kept[0][1]}.pt", weights_only=True)
    best = JointModel.from_pretrained(trainer.run.model("best"))
    for key, value in best.state_dict().items():
        assert torch.equal(value, best_state["model"][key]), key


def test_checkpoint_manager_with_keep_best_zero_still_saves_the_best_model(tmp_path):
    model = JointModel.from_config(
        {"backbone": {"name": "mlp", "in_dim": 4, "hidden": [4]}, "tasks": {"a": {"type": "regression"}}}
    )
    manager = CheckpointManager(tmp_path / "checkpoints", tmp_path / "best", keep_best=0)
    assert manager.save(1, lambda: {"step": 1}, model, score=0.5)
    assert not manager.save(2, lambda: {"step": 2}, model, score=0.1)
    assert (tmp_path / "best" / "config.json").is_file() and not list((tmp_path / "checkpoints").glob("best-*"))


def test_a_task_whose_label_key_differs_from_its_name_trains(tmp_path):
    from core.config import TrainConfig
    from core.data import DataBundle
    from core.engine.trainer import Trainer
    from core.sampling import SAMPLERS

    x = torch.randn(64, 4)
    dataset = DictDataset({"inputs": x, "y_column": (x[:, 0] > 0).long()})
    data = DataBundle(train=[Source("s", dataset, ["sign"])], val=[Source("s", dataset, ["sign"])])
    model = JointModel.from_config(
        {
            "backbone": {"name": "mlp", "in_dim": 4, "hidden": [8]},
            "tasks": {"sign": {"type": "classification", "num_classes": 2, "label_key": "y_column"}},
        }
    )
    from core.balancing import build

    trainer = Trainer(
        model, data, build("ew"), SAMPLERS.build("all"), TrainConfig(max_steps=30, lr=0.01, progress=False)
    )
    assert trainer.balancer.tasks == ["sign"]
    summary = trainer.fit()
    assert summary["status"] == "completed" and trainer.evaluate("val")["sign"]["accuracy"] > 0.8


def test_an_output_dir_that_is_a_file_or_unwritable_is_a_clear_error(tmp_path):
    taken = tmp_path / "file"
    taken.write_text("")
    with pytest.raises(CheckpointError, match="exists and is not a folder"):
        train(toy_config(tmp_path, output_dir=str(taken / "run")))
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(CheckpointError, match=r"permission denied|not writable"):
            train(toy_config(tmp_path, output_dir=str(locked / "run")))


def test_lock_is_released_after_a_failed_run(tmp_path, monkeypatch):
    from core.engine.trainer import Trainer

    def fail(self: Trainer) -> dict:
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "train_step", fail)
    config = toy_config(tmp_path)
    with pytest.raises(RuntimeError, match="boom"):
        train(config)
    assert RunDir(config.output_dir).lock_file.read_text() == ""
