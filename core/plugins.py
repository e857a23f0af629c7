"""User modules named in a config's ``imports:`` list, imported so they register components.

Core's own components register where their registry lives, and installed domain packages are
found through entry points when a name is missing (see ``core.registry``); this module handles
the user's own code only.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from .errors import ConfigError


def load(modules: Sequence[str] = ()) -> None:
    """Import each of ``modules``; the working folder is searched first, as ``python -m`` does
    (a console script such as ``jointtrain`` would not look there)."""
    cwd = os.getcwd()
    if modules and cwd not in sys.path:
        sys.path.insert(0, cwd)
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise ConfigError(
                f"cannot import '{name}' listed in 'imports': {e}. It must be importable from the working "
                f"folder ({cwd}) or the Python path."
            ) from e
