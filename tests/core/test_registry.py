from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.registry import REGISTRIES, Registry


def test_unknown_name_lists_valid_names_and_suggests():
    from core.balancing import BALANCERS

    with pytest.raises(ConfigError, match=r"unknown balancing method 'uww'\. Did you mean 'uw'\?.*Valid names: .*dwa"):
        BALANCERS.build("uww")


def test_registration_refuses_silent_overwrite():
    registry: Registry[object] = Registry("test thing")
    try:
        registry.register("a")(dict)
        with pytest.raises(ValueError, match="already registered"):
            registry.register("a")(list)
        registry.register("a", override=True)(list)
        assert registry.get("a") is list
    finally:
        del REGISTRIES["test thing"]


def test_import_path_builds_user_components():
    from core.backbones import BACKBONES

    backbone = BACKBONES.build({"name": "torch.nn:Linear", "in_features": 3, "out_features": 2})
    assert backbone.out_features == 2
    with pytest.raises(ConfigError, match="has no attribute 'Nope'"):
        BACKBONES.build("torch.nn:Nope")


def test_unknown_argument_names_the_key_and_valid_ones():
    from core.backbones import BACKBONES

    with pytest.raises(ConfigError, match=r"backbone 'mlp' got an unknown argument 'hiden'\. Did you mean 'hidden'"):
        BACKBONES.build({"name": "mlp", "in_dim": 4, "hiden": [8]})


def test_none_kwargs_are_pruned_so_defaults_stand():
    from core.backbones import BACKBONES

    backbone = BACKBONES.build({"name": "mlp", "in_dim": 4, "hidden": None})
    assert backbone.out_dim == 256
