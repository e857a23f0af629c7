"""Every registered balancing method, through the real trainer: it trains, and its state resumes.

Parametrized over the registry, so a new method is tested for free.
"""

from __future__ import annotations

import math

import pytest
import torch

from core.balancing import BALANCERS, names
from core.errors import ConfigError

from .helpers import build_trainer, toy_config


@pytest.mark.parametrize("method", names())
def test_method_trains_and_round_trips_its_state(tmp_path, method):
    trainer = build_trainer(
        toy_config(tmp_path, **{"balancing.name": method, "train.max_steps": 4, "train.eval_every": 4})
    )
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    summary = trainer.fit()
    assert summary["status"] == "completed" and trainer.step == 4
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter moved"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())

    info = BALANCERS.get(method).describe()  # what `jointtrain list` prints
    assert info["kind"] in ("loss", "weighting", "aggregator") and isinstance(info["cost"], str)
    assert isinstance(info["state"], str) and info["ddp"]
    resumed = build_trainer(
        toy_config(tmp_path, **{"balancing.name": method, "train.max_steps": 4, "train.eval_every": 4})
    )
    resumed.load_state_dict(torch.load(trainer.run.last_checkpoint, weights_only=True))
    saved, loaded = trainer.balancer.state_dict(), resumed.balancer.state_dict()
    assert saved.keys() == loaded.keys()
    for key in saved:
        if isinstance(saved[key], torch.Tensor):
            assert torch.equal(saved[key], loaded[key]), key
        else:
            assert _same(saved[key], loaded[key]), key


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, float):
        return math.isclose(a, b)
    return a == b


@pytest.mark.parametrize("method", names())
def test_method_handles_a_step_where_a_task_is_missing(tmp_path, method):
    """K varies from step to step: one source per task in turn (loss space), or labels so rare that
    some batches carry none of a task (gradient space, which needs every source each step)."""
    cls = BALANCERS.get(method)
    overrides = {"balancing.name": method, "train.max_steps": 4, "train.eval_every": 4}
    per_task = {"data.regime": "per_task", "sampler.name": "round_robin"}
    if cls.kind == "loss":
        overrides.update(per_task)
    else:
        with pytest.raises(ConfigError, match=r"needs at least 2 tasks per step.*use sampler 'all'"):
            build_trainer(toy_config(tmp_path, **overrides, **per_task), out_dir=None)
        overrides.update({"data.label_fraction": 0.04, "train.max_steps": 8, "train.eval_every": 8})
        if "params" in cls.describe()["spaces"]:
            overrides["balancing.space"] = "params"
    trainer = build_trainer(toy_config(tmp_path, **overrides))
    assert trainer.fit()["status"] == "completed"
