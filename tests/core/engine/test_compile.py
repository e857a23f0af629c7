"""train.compile on the CPU with the aot_eager backend (inductor would compile C++ for minutes here)."""

from __future__ import annotations

import pytest
import torch

from core.engine import compiled
from core.errors import ConfigError

from ..helpers import build_trainer, toy_config


def _trained(tmp_path, setting):
    trainer = build_trainer(toy_config(tmp_path, **{"train.compile": setting, "train.device": "cpu"}), out_dir=None)
    for _ in range(3):
        trainer.train_step()
    return trainer


def test_compiled_training_matches_eager_and_keeps_the_state_dict_keys(tmp_path):
    eager, fast = _trained(tmp_path / "eager", False), _trained(tmp_path / "compiled", "aot_eager")
    assert fast.compiled and not eager.compiled
    assert fast.model.backbone._compiled_call_impl is not None  # really compiled, in place
    one, two = eager.model.state_dict(), fast.model.state_dict()
    assert list(one) == list(two)  # no "_orig_mod." prefix: save_pretrained needs no unwrapping
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=1e-5, rtol=0)


def test_compile_falls_back_with_one_warning_where_it_cannot_run(tmp_path, monkeypatch):
    monkeypatch.setattr(compiled.shutil, "which", lambda name: None)  # no C++ compiler for inductor
    with pytest.warns(RuntimeWarning, match=r"C\+\+ compiler") as caught:
        trainer = build_trainer(toy_config(tmp_path, **{"train.compile": True, "train.device": "cpu"}), out_dir=None)
    assert len([w for w in caught if "train.compile" in str(w.message)]) == 1
    assert not trainer.compiled and trainer.model.backbone._compiled_call_impl is None
    trainer.train_step()


def test_an_unknown_backend_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown train\.compile backend 'nope'"):
        build_trainer(toy_config(tmp_path, **{"train.compile": "nope", "train.device": "cpu"}), out_dir=None)
