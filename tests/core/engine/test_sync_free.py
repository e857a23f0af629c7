"""The trainer's own host syncs: none per micro-batch outside log steps (``ew``, any task mix)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from core.engine.host_syncs import HostSyncCounter
from core.engine.records import host_record
from core.errors import NonFiniteLossError

from ..helpers import build_trainer, toy_config


def _trainer(tmp_path, balancing: str = "ew", **overrides):
    defaults = {
        "train.device": "cpu",
        "data.label_fraction": 0.5,
        "train.optimizer": "sgd",
        "balancing.name": balancing,
    }
    config = toy_config(tmp_path, **{**defaults, **overrides})
    trainer = build_trainer(config, out_dir=None)
    trainer.update.skip_on_device = True  # as on CUDA: the skip decided by the fused optimizer, nothing read back
    (name,) = trainer.streams
    batch = next(trainer.streams[name])
    trainer.streams[name] = itertools.repeat(batch)  # the same batch: its label checks are counted below
    return trainer, name, batch


def _label_checks(trainer, name, batch) -> int:
    """What the task types' label checks and counts cost: reads of the CPU batch, no device sync."""
    with HostSyncCounter() as checks:
        trainer._batches([name])
    return checks.total


def test_the_forward_reads_nothing_back(tmp_path):
    trainer, name, batch = _trainer(tmp_path)
    with HostSyncCounter() as forward:
        trainer._forward({name: batch})
    assert forward.total == 0


SYNC_FREE = {
    "ew": {"balancing.heuristic": "config"},
    "ew-inverse_initial_loss": {"balancing.heuristic": "inverse_initial_loss"},
    "ew-loss_scale": {"balancing.heuristic": "loss_scale"},
    "uw": {"balancing.name": "uw"},
}


@pytest.mark.parametrize("case", list(SYNC_FREE))
def test_a_non_log_step_has_no_trainer_sync(tmp_path, case):
    trainer, name, batch = _trainer(tmp_path, **{**SYNC_FREE[case], "train.grad_accum": 2})
    assert not trainer.balancer.host_values
    checks = _label_checks(trainer, name, batch)
    trainer.train_step()  # the first step: lazy state
    with HostSyncCounter() as step:
        record = trainer.train_step()
    assert step.total == 2 * checks  # two micro-batches, each only its CPU label checks
    with HostSyncCounter() as log:
        logged = host_record(record, trainer.balancer, trainer.model.architecture)
    assert log.calls["tolist"] == 1  # the log step reads the whole record back at once
    assert all(isinstance(v, float) and math.isfinite(v) for k, v in logged.items() if k.startswith("loss/"))


def test_a_host_values_balancer_costs_one_sync_per_step(tmp_path):
    trainer, name, batch = _trainer(tmp_path, "dwa", **{"train.grad_accum": 2})
    assert trainer.balancer.host_values
    checks = _label_checks(trainer, name, batch)
    trainer.train_step()
    with HostSyncCounter() as step:
        trainer.train_step()
    assert step.total - 2 * checks == step.calls["tolist"] == 1  # the step's loss table, once


def test_a_nonfinite_step_is_skipped_and_the_log_step_reports_it(tmp_path):
    trainer = _trainer(tmp_path, **{"train.max_nonfinite_steps": 1})[0]
    head = trainer.model.heads["parity"].fc
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with torch.no_grad():
        head.weight[0, 0] = math.inf
    trainer.train_step()  # skipped on the device: every parameter as it was
    for n, p in trainer.model.named_parameters():
        if n != "heads.parity.fc.weight":
            torch.testing.assert_close(p.detach(), before[n])
    with pytest.warns(RuntimeWarning, match=r"skipping step 0: task 'parity' loss=(nan|inf)"):
        trainer.watch.check()
    trainer.step = 1
    trainer.train_step()
    with pytest.raises(NonFiniteLossError, match=r"step 1: task 'parity' .*2 step\(s\) in a row"):
        trainer.watch.check()


@pytest.mark.parametrize("on_device", [True, False], ids=["found_inf", "host decides"])
@pytest.mark.parametrize("balancing", ["ew", "dwa", "upgrad"])
@pytest.mark.parametrize("amp", ["off", "fp16"])
def test_a_nonfinite_step_moves_nothing_and_the_fp16_scale_backs_off(tmp_path, balancing, amp, on_device):
    """Parameters, AdamW moments and step counts stay as they were (before: the sync-free path zeroed
    the gradients and AdamW still moved ~0.9 of a step on its momentum, decayed the weights and
    counted the step; under fp16 the scaler saw finite zeros and kept its scale)."""
    overrides = {
        "train.optimizer": "adamw",
        "train.weight_decay": 0.1,
        "train.amp": amp,
        "train.max_nonfinite_steps": 1,
    }
    trainer = _trainer(tmp_path, balancing, **overrides)[0]
    trainer.update.skip_on_device = on_device
    trainer.train_step()  # a normal step: moments exist
    trainer.step = 1
    params = dict(trainer.model.named_parameters())
    before = {n: p.detach().clone() for n, p in params.items()}
    state = {n: {k: v.clone() for k, v in trainer.optimizer.state[p].items()} for n, p in params.items()}
    scale = trainer.precision.scaler.get_scale() if amp == "fp16" else None
    with torch.no_grad():
        params["heads.parity.fc.weight"][0, 0] = math.inf
    with pytest.warns(RuntimeWarning, match="skipping step 1"):
        trainer.train_step()
        trainer.watch.check()
    for n, p in params.items():
        if n != "heads.parity.fc.weight":
            torch.testing.assert_close(p.detach(), before[n], rtol=0, atol=0, msg=n)
        for k, v in state[n].items():
            torch.testing.assert_close(trainer.optimizer.state[p][k], v, rtol=0, atol=0, msg=f"{n} {k}")
    if amp == "fp16":
        assert trainer.precision.scaler.get_scale() == scale * 0.5  # as GradScaler does for its own overflow
