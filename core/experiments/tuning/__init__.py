"""``jointtrain tune`` on Optuna: the search space, samplers and pruners, the shared study, one trial.

Optuna is an extra (``jointtrain[tune]``); importing this package without it fails with the fix.
"""

from __future__ import annotations

import warnings

from ...errors import ConfigError

try:
    import optuna
except ImportError as e:
    raise ConfigError("jointtrain tune runs on Optuna, which is not installed: pip install 'jointtrain[tune]'") from e

if tuple(int(p) for p in optuna.__version__.split(".")[:2]) < (4, 9):  # heartbeat callbacks as named since 4.9
    raise ConfigError(f"jointtrain tune needs Optuna >= 4.9, found {optuna.__version__}: pip install -U 'optuna>=4.9'")

optuna.logging.set_verbosity(optuna.logging.WARNING)  # jointtrain tune prints its own progress
# heartbeats (lost workers' trials run again) are marked experimental by Optuna; we rely on them on purpose
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
