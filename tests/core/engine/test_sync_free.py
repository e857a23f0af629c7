"""The trainer's own host syncs per micro-batch: one (the all-reduced (sum, count) table)."""

from __future__ import annotations

from core.engine.host_syncs import HostSyncCounter

from ..helpers import build_trainer, toy_config


def test_the_forward_adds_one_host_sync_to_what_the_tasks_need(tmp_path):
    config = toy_config(tmp_path, **{"train.device": "cpu", "data.label_fraction": 0.5})
    trainer = build_trainer(config, out_dir=None)
    (name,) = trainer.streams
    batch = next(trainer.streams[name])
    tasks = trainer.source_by_name[name].tasks
    with HostSyncCounter() as by_tasks:  # what the task types cost: masking, counts, label checks
        outputs = trainer.model(batch["inputs"], tasks)
        for t in tasks:
            task = trainer.model.tasks[t]
            assert task.loss(outputs[t], batch[task.label_key]) is not None
            task.labelled(outputs[t], batch[task.label_key])
    with HostSyncCounter() as forward:
        trainer._forward({name: batch})
    assert forward.total == by_tasks.total + 1
    assert forward.calls["tolist"] == by_tasks.calls["tolist"] + 1
