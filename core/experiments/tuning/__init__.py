"""``jointtrain tune`` on Optuna: the search space, samplers and pruners, the shared study, one trial.

Optuna is an extra (``jointtrain[tune]``); importing this package without it fails with the fix.
"""

from __future__ import annotations

from ...errors import ConfigError

try:
    import optuna
except ImportError as e:
    raise ConfigError("jointtrain tune runs on Optuna, which is not installed: pip install 'jointtrain[tune]'") from e

optuna.logging.set_verbosity(optuna.logging.WARNING)  # jointtrain tune prints its own progress
