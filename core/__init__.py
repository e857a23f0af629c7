"""jointtrain core: one shared backbone, one head per task, balanced joint training.

Names are imported on first use (PEP 562), so ``import core.config`` or ``jointtrain --help``
does not load the engine, and the layers below stay importable on their own.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS = {
    "BACKBONES": "core.backbones",
    "BALANCERS": "core.balancing",
    "Balancer": "core.balancing",
    "LossBalancer": "core.balancing",
    "balancing": "core.balancing",
    "RunConfig": "core.config",
    "TrainConfig": "core.config",
    "load_config": "core.config",
    "DATASETS": "core.data",
    "DataBundle": "core.data",
    "DictDataset": "core.data",
    "Loading": "core.data",
    "Source": "core.data",
    "CheckpointError": "core.errors",
    "ConfigError": "core.errors",
    "DataError": "core.errors",
    "JointTrainError": "core.errors",
    "NonFiniteLossError": "core.errors",
    "delta_m": "core.evaluation",
    "evaluate": "core.evaluation",
    "HEADS": "core.heads",
    "JointModel": "core.model",
    "Registry": "core.registry",
    "SAMPLERS": "core.sampling",
    "TaskSampler": "core.sampling",
    "Task": "core.task",
    "TASKS": "core.tasks",
    "build_task": "core.tasks",
    "Trainer": "core.engine.trainer",
    "Experiment": "core.experiments.builder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'core' has no attribute '{name}'")
    module = importlib.import_module(_EXPORTS[name])
    value = module if name == "balancing" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
