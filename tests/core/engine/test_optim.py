from __future__ import annotations

import pytest
import torch

from core.engine.optim import SCHEDULES
from core.errors import ConfigError


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedules_warm_up_linearly_then_stay_in_range(name):
    factor = SCHEDULES.build(name, total=100, warmup=10, min_ratio=0.1)
    assert [factor(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(10) == pytest.approx(1.0)
    assert all(0.1 - 1e-9 <= factor(i) <= 1.0 + 1e-9 for i in range(10, 120))


def test_cosine_and_linear_end_at_the_floor():
    for name in ("cosine", "linear"):
        assert SCHEDULES.build(name, total=100, warmup=0, min_ratio=0.1)(100) == pytest.approx(0.1)
    assert SCHEDULES.build("cosine", total=100, warmup=0)(50) == pytest.approx(0.5)


def _optimizer(tmp_path, **overrides):  # type: ignore[no-untyped-def]
    from ..helpers import build_trainer, toy_config

    return build_trainer(toy_config(tmp_path, **overrides), out_dir=None).optimizer


def test_optimizer_is_a_component_with_its_own_arguments(tmp_path):
    adamw = _optimizer(tmp_path, **{"train.optimizer": {"name": "adamw", "betas": [0.8, 0.9], "eps": 1e-6}})
    assert adamw.defaults["betas"] == (0.8, 0.9) and adamw.defaults["eps"] == 1e-6
    sgd = _optimizer(tmp_path, **{"train.optimizer": {"name": "sgd", "momentum": 0.5, "nesterov": False}})
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5 and not sgd.defaults["nesterov"]
    radam = _optimizer(tmp_path, **{"train.optimizer": {"name": "torch.optim:RAdam", "decoupled_weight_decay": True}})
    assert isinstance(radam, torch.optim.RAdam) and radam.defaults["decoupled_weight_decay"]
    with pytest.raises(ConfigError, match=r"optimizer 'adamw' got an unknown argument 'beta'.*Did you mean 'betas'"):
        _optimizer(tmp_path, **{"train.optimizer": {"name": "adamw", "beta": [0.9, 0.9]}})


def test_old_momentum_key_still_works_with_a_deprecation(tmp_path):
    with pytest.warns(DeprecationWarning, match="train.momentum is deprecated"):
        sgd = _optimizer(tmp_path, **{"train.optimizer": "sgd", "train.momentum": 0.7})
    assert sgd.defaults["momentum"] == 0.7


def test_groups_come_from_the_model_partition(tmp_path):
    optimizer = _optimizer(tmp_path, **{"train.head_lr_scale": 10.0, "train.lr": 0.001})
    trainer_model_params = {id(p) for g in optimizer.param_groups for p in g["params"]}
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([0.001, 0.01])
    no_decay = [p for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert no_decay and all(p.ndim == 1 for p in no_decay)
    assert len(trainer_model_params) == sum(len(g["params"]) for g in optimizer.param_groups)


def test_architecture_parameters_follow_the_decay_rules(tmp_path):
    from ..helpers import build_trainer, toy_config

    trainer = build_trainer(toy_config(tmp_path, **{"model.architecture": {"name": "cross_stitch"}}), out_dir=None)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed = [names[id(p)] for g in trainer.optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert decayed and all(p.endswith(".weight") for p in decayed)
    assert "architecture.units" not in decayed and not any(n.endswith(".bias") for n in decayed)
