"""jointtrain core: one shared backbone, one head per task, balanced joint training."""

from . import balancing
from .backbones import BACKBONES
from .balancing import BALANCERS, Balancer, LossBalancer
from .config import RunConfig, load_config
from .data import DATASETS, DataBundle, DictDataset, Loading, Source
from .errors import CheckpointError, ConfigError, DataError, JointTrainError, NonFiniteLossError
from .evaluation import delta_m, evaluate
from .heads import HEADS
from .model import JointModel
from .registry import Registry
from .sampling import SAMPLERS, TaskSampler
from .task import Task
from .tasks import TASKS, build_task
from .trainer import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "BACKBONES",
    "BALANCERS",
    "DATASETS",
    "HEADS",
    "SAMPLERS",
    "TASKS",
    "Balancer",
    "CheckpointError",
    "ConfigError",
    "DataBundle",
    "DataError",
    "DictDataset",
    "JointModel",
    "JointTrainError",
    "Loading",
    "LossBalancer",
    "NonFiniteLossError",
    "Registry",
    "RunConfig",
    "Source",
    "Task",
    "TaskSampler",
    "TrainConfig",
    "Trainer",
    "balancing",
    "build_task",
    "delta_m",
    "evaluate",
    "load_config",
]
