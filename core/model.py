"""JointModel: a backbone shared as its architecture says, one head per task, saved as safetensors + JSON."""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import hub
from .architectures import ARCHITECTURES
from .backbones import BACKBONES, export_spec, load_extra, save_extra
from .errors import CheckpointError, ConfigError, DataError
from .io import atomic_write_dir
from .predict import PREDICTORS, is_batch
from .registry import suggest, untrusted
from .task import Task
from .tasks import build_task
from .tree import tree_map

FORMAT = "jointtrain.model/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class JointModel(nn.Module):
    """Backbone + ``architecture`` (how its layers are shared) + ``heads[task]``.

    ``forward`` runs the shared part once for all tasks asked. ``architecture`` is a
    ``{name, **kwargs}`` spec of ``core.architectures.ARCHITECTURES``; None = ``hard`` sharing.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[Task],
        backbone_spec: dict[str, Any] | None = None,
        head_dropout: float = 0.0,
        extra: dict[str, Any] | None = None,
        architecture: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if not tasks:
            raise ValueError("a JointModel needs at least one task")
        self.backbone = backbone
        self.tasks: dict[str, Task] = {t.name: t for t in tasks}
        if len(self.tasks) != len(tasks):
            raise ValueError(f"task names must be unique, got {[t.name for t in tasks]}")
        self.heads = nn.ModuleDict({t.name: t.head for t in tasks})
        self.head_dropout = nn.Dropout(head_dropout)
        self.backbone_spec = backbone_spec or {}
        self.extra = extra or {}  # JSON-able preprocessing / metadata saved with the model
        # -- architecture: built last, it may take blocks over from the backbone --
        self.architecture = ARCHITECTURES.build(
            architecture or {"name": "hard"}, backbone=backbone, tasks=list(self.tasks)
        )

    # -- forward ---------------------------------------------------------------------------
    def encode(self, inputs: Any) -> Any:
        return self.architecture.encode(self.backbone, inputs)

    def decode(self, features: Any, tasks: Iterable[str] | None = None) -> dict[str, Any]:
        names = self.task_names(tasks)
        per_task = self.architecture.decode(features, names)
        dropped: dict[int, Any] = {}  # features read by several heads get one dropout draw, as before
        for feats in per_task.values():
            if id(feats) not in dropped:  # masks and ids beside the states stay as they are
                dropped[id(feats)] = tree_map(lambda t: self.head_dropout(t) if t.is_floating_point() else t, feats)
        return {name: self.heads[name](dropped[id(per_task[name])]) for name in names}

    def forward(self, inputs: Any, tasks: Iterable[str] | None = None) -> dict[str, Any]:
        return self.decode(self.encode(inputs), tasks)

    def task_names(self, tasks: Iterable[str] | None = None) -> list[str]:
        """``tasks`` as a list (None: all), each checked to be one of this model's."""
        if tasks is None:
            return list(self.tasks)
        names = [tasks] if isinstance(tasks, str) else list(tasks)
        for name in names:
            if name not in self.tasks:
                raise ConfigError(
                    f"unknown task {name!r}.{suggest(str(name), list(self.tasks))} "
                    f"This model's tasks: {', '.join(self.tasks)}"
                )
        return names

    @torch.no_grad()
    def predict(self, inputs: Any, tasks: Iterable[str] | None = None, **options: Any) -> dict[str, list[Any]]:
        """Per-task, per-sample JSON-friendly predictions in eval mode: ``{task: [one per sample]}``.

        ``inputs`` is either a batch the backbone reads (a tensor or a mapping of tensors) or what
        a user has, read by the model's predictor (``extra["predictor"]``, see ``core.predict``): a
        DataFrame, ``{column: value}`` records or a table file for table models; a string, a list
        of strings or of ``(text, text_pair)`` pairs for text models; image files or ``[C, H, W]``
        tensors of any size for image models; ``options`` go to that predictor (``min_score``).
        """
        names = self.task_names(tasks)
        if not is_batch(inputs):
            records = PREDICTORS.get(self.extra.get("predictor", "tensor"))(self, inputs, **options)
            return {name: [record[name] for record in records] for name in names}
        if options:
            raise ConfigError(f"{', '.join(options)}: options of the model's predictor, which a ready batch skips")
        self.check_input_shape(inputs)
        was_training = self.training
        self.eval()
        try:
            outputs = self(inputs, names)
        finally:
            self.train(was_training)
        return {name: self.tasks[name].postprocess(out) for name, out in outputs.items()}

    def check_input_shape(self, inputs: Any) -> None:
        """A tensor batch whose sample shape is not the one the model was trained on (``input_shape``)."""
        expected = self.extra.get("input_shape")
        if expected is None or not isinstance(inputs, Tensor) or list(inputs.shape[1:]) == list(expected):
            return
        want = ", ".join(map(str, expected))
        fix = (
            f"one sample: x.reshape(1, {want})"
            if inputs.numel() == math.prod(expected)
            else "give every sample the features the model was trained on, in the training order"
        )
        raise DataError(
            f"inputs have shape {list(inputs.shape)}; this model expects [N, {want}] (N samples of "
            f"{want} values, as in training): {fix}"
        )

    # -- parameter partition -----------------------------------------------------------------
    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters that reach two tasks or more: all but the heads and the architecture's task parts."""
        own = {id(p) for t in self.tasks for p in self.task_parameters(t)}
        return (p for p in self.parameters() if id(p) not in own)

    def task_parameters(self, name: str) -> Iterator[nn.Parameter]:
        """Parameters that reach task ``name`` only."""
        yield from self.heads[name].parameters()
        yield from self.architecture.task_parameters(name)

    def parameter_groups(self, lr: float, task_lr_scale: float = 1.0) -> list[dict[str, Any]]:
        """Optimizer groups from the model's own shared / task partition: task-specific parameters at
        ``lr * task_lr_scale``; no weight decay on biases, norm weights (1-D tensors) and what the
        architecture names in ``no_weight_decay()`` (timm's convention, e.g. cross-stitch units)."""
        exempt = {f"architecture.{n}" for n in self.architecture.no_weight_decay()}
        no_decay = {id(p) for n, p in self.named_parameters() if p.ndim < 2 or n.endswith(".bias") or n in exempt}
        parts = {"shared": list(self.shared_parameters())}
        parts["task"] = [p for name in self.tasks for p in self.task_parameters(name)]
        groups = []
        for part, params in parts.items():
            scale = task_lr_scale if part == "task" else 1.0
            trainable = [p for p in params if p.requires_grad]
            for decay in (True, False):
                chosen = [p for p in trainable if (id(p) not in no_decay) == decay]
                if chosen:
                    groups.append({"params": chosen, "lr": lr * scale, **({} if decay else {"weight_decay": 0.0})})
        return groups

    # -- persistence -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "backbone": export_spec(self.backbone, self.backbone_spec),
            "tasks": {name: task.spec for name, task in self.tasks.items()},
            "head_dropout": self.head_dropout.p,
            "extra": self.extra,
            "architecture": self.architecture.spec(),
        }

    def save_pretrained(
        self, directory: str | Path, results: dict[str, Any] | None = None, training_config: str | None = None
    ) -> Path:
        """Write ``config.json`` + ``model.safetensors`` + a ``README.md`` model card atomically.

        The card lists ``results`` (``{split: {task: {metric: value}}}``) and ``training_config``;
        by default those of the run the folder sits in (``run/best``: ``run/results.json``,
        ``run/config.yaml``) when they exist.
        """
        config = self.config()
        if results is None and training_config is None:
            results, training_config = hub.run_results(Path(directory))
        card = hub.model_card(config, results, training_config)
        # Tied tensors share storage, which safetensors refuses; each gets its own copy.
        state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}

        def write(tmp: Path) -> None:
            (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT})
            (tmp / hub.CARD_NAME).write_text(card)
            save_extra(self.backbone, tmp)  # files beside the weights (a tokenizer)

        atomic_write_dir(directory, write)
        return Path(directory)

    @classmethod
    def from_config(cls, config: dict[str, Any], tasks: Sequence[str] | None = None) -> JointModel:
        """Build the architecture (random weights) from a saved config; optionally a subset of heads."""
        backbone = BACKBONES.build(config["backbone"])
        wanted = list(config["tasks"]) if tasks is None else list(tasks)
        unknown = [t for t in wanted if t not in config["tasks"]]
        if unknown:
            raise CheckpointError(f"tasks {unknown} are not in this model; it has {list(config['tasks'])}")
        built = [build_task(name, config["tasks"][name], backbone) for name in wanted]
        return cls(
            backbone,
            built,
            backbone_spec=config["backbone"],
            head_dropout=config.get("head_dropout", 0.0),
            extra=config.get("extra", {}),
            architecture=config.get("architecture"),  # saved before architectures existed: hard
        )

    def _state_for_tasks(self, state: dict[str, Tensor], saved_tasks: list[str]) -> dict[str, Tensor]:
        """Weights of a model with ``saved_tasks`` -> this model's (a subset, maybe reordered)."""
        if saved_tasks == list(self.tasks):
            return state
        dropped = set(saved_tasks) - set(self.tasks)
        state = {k: v for k, v in state.items() if not any(k.startswith(f"heads.{t}.") for t in dropped)}
        prefix = "architecture."  # branches / gates of dropped tasks; per-task rows in the new order
        own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        state = {k: v for k, v in state.items() if not k.startswith(prefix)}
        state.update({prefix + k: v for k, v in self.architecture.adapt_state(own, saved_tasks).items()})
        return state

    def subset(self, tasks: Sequence[str]) -> JointModel:
        """An independent copy with only ``tasks`` (branches and gates of the others dropped),
        as ``from_pretrained(..., tasks=...)`` loads it; e.g. the start of per-task fine-tuning."""
        model = type(self).from_config(self.config(), tasks)
        state = {k: v.detach().clone() for k, v in self.state_dict().items()}
        model.load_state_dict(model._state_for_tasks(state, list(self.tasks)), strict=True)
        with tempfile.TemporaryDirectory() as tmp:  # what a backbone keeps beside its weights travels as saved
            save_extra(self.backbone, Path(tmp))
            load_extra(model.backbone, Path(tmp))
        return model.to(next(self.parameters()).device)

    def push_to_hub(
        self, repo_id: str, private: bool = False, commit_message: str = "Upload joint model", token: str | None = None
    ) -> str:
        """Save into a temporary folder (config, weights, card, tokenizer) and upload it to ``repo_id``."""
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model")
            return hub.push_folder(folder, repo_id, private=private, commit_message=commit_message, token=token)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        tasks: Sequence[str] | None = None,
        map_location: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
    ) -> JointModel:
        """Rebuild a saved model with no pickle; ``tasks`` loads a subset of heads.

        ``directory`` is a folder or a hub id ``org/name`` (at ``revision``, cached in ``cache_dir``;
        ``HF_HUB_OFFLINE=1`` reads the cache only). Components resolve by registered name only: an
        import path in ``config.json`` would run code from the file, so it is refused unless
        ``trust_remote_code=True``, for folders and hub ids alike.
        """
        directory = hub.resolve(directory, revision, cache_dir)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_path.is_file() or not weights_path.is_file():
            raise CheckpointError(
                f"{directory} is not a jointtrain model directory: it needs {CONFIG_NAME} and {WEIGHTS_NAME}"
            )
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{config_path} is not valid JSON: {e}") from e
        if config.get("format") != FORMAT:
            raise CheckpointError(f"{config_path} has format {config.get('format')!r}, expected {FORMAT!r}")
        if trust_remote_code:
            model = cls.from_config(config, tasks)
        else:
            with untrusted(str(config_path)):
                model = cls.from_config(config, tasks)
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error type for truncated files
            raise CheckpointError(f"{weights_path} is corrupt: {e}") from e
        state = model._state_for_tasks(state, list(config["tasks"]))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise CheckpointError(f"weights in {weights_path} do not match its config: {e}") from e
        load_extra(model.backbone, directory)
        return model.to(map_location)
