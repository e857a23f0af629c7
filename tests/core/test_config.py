from __future__ import annotations

import pytest

from core.config import load_config
from core.errors import ConfigError
from core.experiments.run import train

from .helpers import build_trainer, toy_config


def test_typo_in_a_section_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'config.train.max_step'\. Did you mean 'max_steps'"):
        toy_config(tmp_path, **{"train.max_step": 5})


def test_unknown_top_level_section(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'config.trian'\. Did you mean 'train'"):
        toy_config(tmp_path, **{"trian.lr": 1})


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'config.train.max_steps' must be int, got 'ten'"):
        toy_config(tmp_path, **{"train.max_steps": "ten"})


def test_overrides_parse_yaml_values(tmp_path):
    config = toy_config(tmp_path, **{"train.lr": 1e-4, "model.backbone.hidden": [8, 8], "finetune": None})
    assert config.train.lr == 1e-4 and config.model.backbone["hidden"] == [8, 8] and config.finetune is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"balancing.name": "pcgard"}, r"unknown balancing method 'pcgard'\. Did you mean 'pcgrad'"),
        ({"sampler.name": "roundrobin"}, r"unknown sampler 'roundrobin'\. Did you mean 'round_robin'"),
        ({"model.backbone.name": "mlpp"}, r"unknown backbone 'mlpp'"),
        ({"tasks.digit.type": "clasification"}, r"unknown task type 'clasification'\. Did you mean 'classification'"),
        ({"data.name": "digits"}, r"unknown dataset 'digits'"),
        ({"train.optimizer": "adam"}, r"unknown optimizer 'adam'\. Did you mean 'adamw'"),
    ],
)
def test_unknown_component_names_list_the_valid_ones(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        build_trainer(toy_config(tmp_path, **override))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_run_directory_of_an_incompatible_config_is_refused(tmp_path):
    train(toy_config(tmp_path, **{"train.max_steps": 5}))
    with pytest.raises(ConfigError, match=r"differs from the checkpoint's in model\.backbone"):
        train(toy_config(tmp_path, **{"model.backbone.hidden": [16]}), resume=True)
    with pytest.raises(ConfigError, match="already holds a run; pass --resume"):
        train(toy_config(tmp_path, **{"train.max_steps": 5}))


@pytest.mark.parametrize(("key", "value"), [("train.max_steps", 0), ("train.lr", -1.0), ("train.grad_accum", 0)])
def test_out_of_range_training_values(tmp_path, key, value):
    with pytest.raises(ConfigError, match=rf"{key} must be >= "):
        toy_config(tmp_path, **{key: value})
