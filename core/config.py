"""Run configuration: a YAML file plus ``--set key=value`` overrides, validated into dataclasses.

Every section that names a component (``model.backbone``, ``data``, ``balancing``, ``sampler``)
is a ``{name, **kwargs}`` spec checked against the component's signature when it is built, so
a misspelled key fails with the valid ones listed.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data import Loading
from .errors import ConfigError
from .spec import from_dict


class _Loader(yaml.SafeLoader):
    """YAML with YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 reads it as a string), and
    duplicate keys refused (PyYAML keeps the last one: a task given twice silently takes its second spec)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                first, again = seen[key].start_mark.line + 1, key_node.start_mark.line + 1
                lines = f"both on line {first}" if first == again else f"lines {first} and {again}"
                raise ConfigError(
                    f"{key_node.start_mark.name}: key '{key}' is given twice in one mapping ({lines}); YAML would "
                    "keep only the last. Remove or rename one of them"
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, name: str = "<yaml>") -> Any:
    """YAML text read with :class:`_Loader`; ``name`` (the file) is what errors call it."""
    loader = _Loader(text)
    loader.name = name
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


@dataclass
class TrainConfig:
    max_steps: int = 1000  # optimizer steps (each may accumulate several micro-batches)
    optimizer: str | dict[str, Any] = "adamw"  # {name, **kwargs}: adamw, sgd, or 'torch.optim:RAdam'...
    lr: float = 1e-3
    head_lr_scale: float = 1.0  # task-specific parameters train at lr * head_lr_scale (fresh heads, pretrained trunk)
    weight_decay: float = 0.01  # decoupled (AdamW) / L2 (SGD); never on biases, norms or balancer weights
    momentum: float | None = None  # deprecated: write optimizer: {name: sgd, momentum: ...}
    schedule: str = "cosine"  # constant | cosine | linear, after warmup
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # final lr as a fraction of lr
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 (with a GradScaler) | off
    grad_accum: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float = 0.0  # 0 = no clipping
    l1: float = 0.0  # L1 penalty on all trainable weights (sparsity / overfitting control)
    eval_every: int = 100  # steps between validation runs (0 = only at the end)
    monitor: str = "score"  # "score" (mean relative change of the primary metrics) or "task/metric"
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 = off
    keep_best: int = 1  # resumable checkpoints kept for the best validation scores (besides last.pt)
    log_every: int = 10
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:1 ...
    channels_last: bool = False  # memory format for conv backbones on CUDA
    compile: bool | str = False  # torch.compile backbone and heads: true (inductor) or a backend name (aot_eager...)
    max_nonfinite_steps: int = 0  # consecutive NaN/Inf-loss steps skipped before stopping
    progress: bool = True  # tqdm bar on rank 0

    def __post_init__(self) -> None:
        positive = {"max_steps": self.max_steps, "grad_accum": self.grad_accum, "log_every": self.log_every}
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {value}")
        non_negative = {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup_steps,
            "clip_grad_norm": self.clip_grad_norm,
            "l1": self.l1,
            "eval_every": self.eval_every,
            "early_stopping_patience": self.early_stopping_patience,
            "keep_best": self.keep_best,
            "max_nonfinite_steps": self.max_nonfinite_steps,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {value}")
        if self.momentum is not None:  # the old spelling: fold it into the optimizer spec
            spec = {"name": self.optimizer} if isinstance(self.optimizer, str) else dict(self.optimizer)
            warnings.warn(
                f"train.momentum is deprecated; write train.optimizer: {{name: {spec['name']}, momentum: "
                f"{self.momentum}}}",
                DeprecationWarning,
                stacklevel=2,
            )
            if spec["name"] == "sgd":
                spec.setdefault("momentum", self.momentum)
            self.optimizer, self.momentum = spec, None

    @property
    def optimizer_spec(self) -> dict[str, Any]:
        return {"name": self.optimizer} if isinstance(self.optimizer, str) else dict(self.optimizer)


@dataclass
class ModelConfig:
    backbone: dict[str, Any] = field(default_factory=dict)  # {name, **kwargs}
    architecture: dict[str, Any] = field(default_factory=lambda: {"name": "hard"})  # which layers tasks share
    head_dropout: float = 0.0  # dropout on shared features before every head


@dataclass
class FinetuneConfig:
    """Optional second stage: per-task fine-tuning starting from the joint model."""

    mode: str = "head"  # head (backbone frozen) | full (head + backbone)
    steps: int = 200
    lr_scale: float = 0.1  # fine-tuning lr = train.lr * lr_scale
    tasks: list[str] = field(default_factory=list)  # empty = every task


@dataclass
class ReportConfig:
    """The run report (``report.md`` + PNG plots, see core.engine.report) written after training."""

    enabled: bool = True  # needs matplotlib (the ``report`` extra); without it a warning says so
    train_eval_samples: int = 2048  # training samples re-scored by the best model for the train-val gap; 0 off, -1 all
    affinity_batches: int = 4  # training batches for the look-ahead task-affinity measurement; 0 = off
    affinity_lr: float = 0.01  # SGD step of the look-ahead; small enough to stay in the linear regime


@dataclass
class DistributedConfig:
    """How several ranks (``torchrun``) share the model."""

    # ddp: DistributedDataParallel for loss-space methods, the engine's reduction for gradient-space
    # ones; fsdp: FSDP2 sharding of parameters, gradients and optimizer state (loss-space methods)
    strategy: str = "ddp"


@dataclass
class RunConfig:
    model: ModelConfig
    tasks: dict[str, dict[str, Any]]  # task name -> {type, **kwargs}
    data: dict[str, Any]  # {name, **kwargs}: a dataset factory returning a DataBundle
    loading: Loading = field(default_factory=Loading)
    balancing: dict[str, Any] = field(default_factory=lambda: {"name": "ew"})
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "all"})
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig | None = None
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> metric -> value, for Δm
    report: ReportConfig = field(default_factory=ReportConfig)
    output_dir: str = "runs/default"
    imports: list[str] = field(default_factory=list)  # modules to import so they register components

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (``1e-3``, ``[1, 2]``, ``null``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = parse_yaml(text)
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping, or a clear error."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = parse_yaml(path.read_text(), str(path)) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"{path} must hold a mapping of sections (model:, tasks:, data:, ...), not a {type(raw).__name__}"
        )
    return dict(raw)


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), raw: dict[str, Any] | None = None
) -> RunConfig:
    """Read YAML (or take ``raw``), apply overrides, validate."""
    if raw is None:
        if path is None:
            raise ConfigError("give a config path or a raw mapping")
        raw = read_yaml(path)
    raw = apply_overrides(dict(raw), overrides)
    if path is not None:
        raw = _resolve_data_path(raw, Path(path).parent)
    config: RunConfig = from_dict(RunConfig, raw)
    if not config.tasks:
        raise ConfigError("the config defines no tasks")
    if config.finetune is not None and config.finetune.mode not in ("head", "full"):
        raise ConfigError(f"finetune.mode must be 'head' or 'full', got '{config.finetune.mode}'")
    if "name" not in config.model.backbone:
        raise ConfigError("model.backbone needs a 'name'")
    if "name" not in config.data:
        raise ConfigError("data needs a 'name' (a registered dataset or 'package.module:factory')")
    return config


def _resolve_data_path(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A relative ``data.path`` means the config file's folder (so ``jointtrain evaluate RUN`` works from
    anywhere); it is recorded absolute. Package paths (``pkg:name/file``) are left alone."""
    data = raw.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("path"), str) or ":" in data["path"]:
        return raw
    given = Path(data["path"]).expanduser()
    if given.is_absolute():
        return raw
    beside = folder / given
    resolved = beside if beside.exists() or not given.exists() else given  # the working folder, as before
    return {**raw, "data": {**data, "path": str(resolved.absolute())}}


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
