"""End-to-end behaviour of the trainer on the digits toy problem (real data, tiny model)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from core.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError
from core.experiments.run import train
from core.model import JointModel
from core.rundir.directory import RunDir

from ..helpers import build_trainer, toy_config


def test_joint_training_of_related_tasks_learns(tmp_path):
    config = toy_config(tmp_path, **{"train.max_steps": 150, "train.eval_every": 50, "data.label_fraction": 0.5})
    report = train(config)
    # chance is 0.10 for digit and 0.50 for parity
    assert report["tasks"]["digit"]["accuracy"] > 0.85
    assert report["tasks"]["parity"]["accuracy"] > 0.85
    saved = RunDir(tmp_path / "run").summary()
    assert saved["tasks"]["digit"]["accuracy"] == pytest.approx(report["tasks"]["digit"]["accuracy"])
    assert saved["split"] == "test"
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["split"] == "setup" and "epoch" in records[0]["sampler"]
    assert any(r["split"] == "val" for r in records)
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


def test_one_dataset_per_task_regime(tmp_path):
    config = toy_config(tmp_path, **{"data.regime": "per_task", "sampler.name": "round_robin", "train.max_steps": 120})
    trainer = build_trainer(config)
    assert sorted(s.name for s in trainer.data.train) == ["digit", "parity"]
    assert trainer.sampler.choose(0) != trainer.sampler.choose(1)
    trainer.fit()
    results = trainer.evaluate("test")
    assert results["digit"]["accuracy"] > 0.6 and results["parity"]["accuracy"] > 0.7


def test_missing_labels_never_reach_the_loss(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"data.label_fraction": 0.3}))
    batch = next(trainer.streams["digits"])
    task = trainer.model.tasks["parity"]
    outputs = trainer.model(batch["inputs"])
    labels = batch["parity"]
    assert (labels < 0).any(), "the toy hides labels"
    expected = torch.nn.functional.cross_entropy(outputs["parity"][labels >= 0], labels[labels >= 0])
    assert float(task.loss(outputs["parity"], labels)) == pytest.approx(float(expected))
    assert task.loss(outputs["parity"], torch.full_like(labels, -1)) is None


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_exact_resume_after_interruption(tmp_path):
    overrides = {"train.max_steps": 30, "train.eval_every": 10, "model.backbone.dropout": 0.2, "balancing.name": "rlw"}
    full = build_trainer(toy_config(tmp_path / "a", **overrides))
    full.fit()

    interrupted = build_trainer(toy_config(tmp_path / "b", **overrides))
    original = interrupted.train_step

    def stop_after_step_17() -> dict:
        record = original()
        if interrupted.step == 16:  # the loop increments after this returns: stop at 17
            interrupted.request_stop()
        return record

    interrupted.train_step = stop_after_step_17  # type: ignore[method-assign]
    assert interrupted.fit()["status"] == "interrupted"

    resumed = build_trainer(toy_config(tmp_path / "b", **overrides))
    assert resumed.fit(resume=True)["status"] == "completed"
    assert resumed.step == 30
    a, b = _weights(full.model), _weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    big = build_trainer(toy_config(tmp_path / "a", **{"loading.batch_size": 64, "train.max_steps": 3}))
    small = build_trainer(
        toy_config(tmp_path / "b", **{"loading.batch_size": 32, "train.grad_accum": 2, "train.max_steps": 3})
    )
    # Same samples in the same order: feed the big trainer's batches to the small one in halves.
    stream = big.streams["digits"]
    batches = [stream.__next__() for _ in range(3)]
    stream.load_state_dict({"epoch": 0, "offset": 0})
    halves = iter([{k: v[s] for k, v in b.items()} for b in batches for s in (slice(0, 32), slice(32, 64))])
    small.streams = {"digits": _Feeder(halves)}
    big.fit()
    small.fit()
    a, b = _weights(big.model), _weights(small.model)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


class _Feeder:
    def __init__(self, it):
        self.it = it

    def __next__(self):
        return next(self.it)

    def state_dict(self):
        return {}


def test_nonfinite_loss_names_task_and_step(tmp_path):
    trainer = build_trainer(toy_config(tmp_path))
    head = trainer.model.heads["parity"].fc
    with torch.no_grad():
        head.weight.fill_(math.nan)
    with pytest.raises(NonFiniteLossError, match=r"step 0: task 'parity' loss=nan"):
        trainer.fit()


def test_nonfinite_steps_can_be_skipped_up_to_a_limit(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.max_nonfinite_steps": 2, "train.max_steps": 5}))
    with torch.no_grad():
        trainer.model.heads["parity"].fc.weight.fill_(math.nan)
    with pytest.warns(RuntimeWarning, match="skipping step 0"), pytest.raises(NonFiniteLossError, match="3 step"):
        trainer.fit()


def test_label_out_of_range_is_a_clear_error(tmp_path):
    config = toy_config(tmp_path)
    config.tasks["parity"]["num_classes"] = 2
    trainer = build_trainer(config)
    trainer.model.tasks["parity"].spec["num_classes"] = 1  # labels 0/1 now exceed num_classes
    with pytest.raises(DataError, match=r"task 'parity': label 1 is out of range for num_classes=1"):
        trainer.fit()


def test_task_without_labelled_training_samples_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"no labelled sample in the training split"):
        build_trainer(toy_config(tmp_path, **{"data.label_fraction": 0.0}))


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    first = build_trainer(toy_config(tmp_path, **{"train.max_steps": 10}))
    first.fit()
    other = build_trainer(toy_config(tmp_path, **{"model.backbone.hidden": [32]}))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in model\.backbone"):
        other.fit(resume=True)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.max_steps": 10}))
    trainer.fit()
    trainer.run.last_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        build_trainer(toy_config(tmp_path)).fit(resume=True)


def test_early_stopping_and_best_checkpoint(tmp_path):
    config = toy_config(
        tmp_path,
        **{
            "train.max_steps": 400,
            "train.eval_every": 5,
            "train.early_stopping_patience": 2,
            "train.lr": 0.0,
            "train.warmup_steps": 0,
        },
    )
    trainer = build_trainer(config)
    summary = trainer.fit()
    # lr=0 never improves after the first evaluation: stops after 1 + patience evaluations
    assert summary["status"] == "early_stopped" and summary["step"] == 15


def test_finetune_stage_reports_before_and_after(tmp_path):
    config = toy_config(tmp_path, **{"train.max_steps": 30, "finetune": {"mode": "head", "steps": 20}})
    report = train(config)
    for task in ("digit", "parity"):
        entry = report["finetune"][task]
        assert set(entry["before"]) == {"val", "test"} and "accuracy" in entry["after"]["test"]
    model = JointModel.from_pretrained(tmp_path / "run" / "finetuned" / "digit" / "final")
    assert list(model.tasks) == ["digit"]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_trains(tmp_path, amp):
    trainer = build_trainer(toy_config(tmp_path, **{"train.amp": amp, "train.max_steps": 60, "train.eval_every": 60}))
    assert trainer.precision.dtype is not None and trainer.precision.scaler.is_enabled() == (amp == "fp16")
    trainer.fit()
    assert trainer.evaluate("val")["parity"]["accuracy"] > 0.7


def test_l1_penalty_sparsifies_weights(tmp_path):
    def small_weights(l1: float) -> float:
        trainer = build_trainer(
            toy_config(tmp_path / str(l1), **{"train.l1": l1, "train.max_steps": 60, "train.weight_decay": 0.0})
        )
        trainer.fit()
        w = trainer.model.backbone.net[0].weight
        return float((w.abs() < 1e-3).float().mean())

    assert small_weights(0.01) > small_weights(0.0) + 0.1


def test_sgd_with_clipping_and_tensorboard(tmp_path):
    config = toy_config(
        tmp_path,
        **{
            "train.optimizer": "sgd",
            "train.lr": 0.05,
            "train.clip_grad_norm": 1.0,
            "train.schedule": "linear",
            "train.max_steps": 40,
            "train.log_every": 10,
        },
    )
    trainer = build_trainer(config)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert all("grad_norm" in r and "loss/digit" in r and "weight/parity" in r for r in train_records)
    assert train_records[-1]["lr"] < train_records[0]["lr"]
    assert any((tmp_path / "run" / "tb").iterdir()), "TensorBoard events are written when it is installed"


def test_heads_can_train_at_a_scaled_learning_rate(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.head_lr_scale": 10.0, "train.lr": 0.001}))
    head_params = {id(p) for p in trainer.model.heads.parameters()}
    for group in trainer.optimizer.param_groups[:4]:
        is_head = {id(p) in head_params for p in group["params"]}
        assert len(is_head) == 1 and group["lr"] == pytest.approx(0.01 if is_head.pop() else 0.001)


def test_loaders_are_kept_across_epochs_and_evaluations(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.max_steps": 60, "train.eval_every": 20}), out_dir=None)
    (stream,) = trainer.streams.values()
    trainer.train_step()
    loader = stream.loader
    trainer.step = 1
    trainer.fit()
    assert stream.epoch >= 1 and stream.loader is loader  # the epoch boundary kept the loader
    (val,) = trainer.data.val
    (kept,) = val.eval_loaders.values()  # three evaluations, one loader
    trainer.evaluate("val")
    assert list(val.eval_loaders.values()) == [kept]


def test_validation_observers_see_each_selection_score_and_may_stop_the_run(tmp_path):
    trainer = build_trainer(toy_config(tmp_path, **{"train.max_steps": 30, "train.eval_every": 10}), out_dir=None)
    seen: list[tuple[int, float]] = []

    def observe(step: int, score: float) -> None:
        seen.append((step, score))
        if step == 20:
            trainer.request_stop()

    trainer.life.on_validation.append(observe)
    summary = trainer.fit()
    assert [step for step, _ in seen] == [10, 20] and summary["status"] == "interrupted" and summary["step"] == 20
    assert summary["best_score"] == max(score for _, score in seen)  # the scores model selection uses
