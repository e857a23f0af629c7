"""Populate the registries: core's own components, installed domain packages, user modules.

Domain packages announce themselves through the ``jointtrain.plugins`` entry-point group
(see pyproject.toml), so ``core`` never imports them by name.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from importlib.metadata import entry_points

from .errors import ConfigError

BUILTIN = ("core.tasks", "core.balancing", "core.sampling", "core.optim", "core.toy", "core.predict", "core.tabular")
_loaded = False


def load(modules: Sequence[str] = ()) -> None:
    """Import built-in and plugin modules once, then ``modules`` (a config's ``imports``)."""
    global _loaded
    if not _loaded:
        for name in BUILTIN:
            importlib.import_module(name)
        for ep in entry_points(group="jointtrain.plugins"):
            try:
                ep.load()
            except ImportError as e:  # a domain installed without its extra
                warnings.warn(
                    f"jointtrain plugin '{ep.name}' not loaded: {e}; install jointtrain[{ep.name}]", stacklevel=2
                )
        _loaded = True
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(f"cannot import '{name}' listed in 'imports': {e}") from e
