"""Generic task types: classification, binary, multi-label and regression on pooled features.

Each type is one class that owns its label semantics (how a raw column is encoded, which
samples are labelled, loss, metrics, the prediction record) and one factory registered with
:func:`task_type`, which records the factory's arguments as the task's ``spec`` (the JSON that
rebuilds it), so no factory writes its spec by hand.

Prediction records (``postprocess``), one schema per type:

- classification: ``{"label": name or index, "index": int, "probabilities": [float] * C}``
- binary: ``{"label": name or 0/1, "probability": float}``
- multilabel: ``{"labels": [names or indices >= 0.5], "probabilities": [float] * K}``
- regression: ``{"value": float}`` (a list when ``out_dim > 1``)
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import default_head, feature_width
from .errors import ConfigError, DataError
from .heads import HEADS
from .metrics import METRICS
from .registry import Registry
from .task import EncodedLabels, Task, bad_value, is_empty, label_mask

TASKS: Registry[Task] = Registry("task type")

#: names a label's position as its file does (``row 5 (header = row 1)``), for messages
RowName = Callable[[int], str]

#: ``(model, sources, loading, tasks) -> {task: fitted values}``: what a task type can only decide
#: on a trained model (post-hoc calibration, decision thresholds), fitted in place on held-out data
Calibration = Callable[[Any, Sequence[Any], Any, Sequence[str]], dict[str, Any]]


@dataclass(frozen=True)
class TaskType:
    """What a factory registered through :func:`task_type` declares besides building tasks."""

    task_class: type[Task]  # owns the labels' semantics (datasets reading raw columns ask it)
    calibrate: Calibration | None  # the stage fitted after training, if any


#: each registered factory's declaration, by the factory the registry holds (import paths included)
_DECLARED: dict[Callable[..., Task], TaskType] = {}


def task_type(
    type_name: str,
    task_class: type[Task],
    calibrate: Calibration | None = None,
    in_weights: Sequence[str] = (),
) -> Callable[[Callable[..., Task]], Callable[..., Task]]:
    """Register a task factory under ``type_name``; its bound arguments (defaults filled, minus
    ``name``, ``backbone`` and the ``in_weights`` ones) become the task's ``spec``. A factory puts
    into ``task.spec`` only values it resolved itself (``pos_weight: auto`` -> the number), which
    take precedence. ``in_weights`` names arguments the saved weights hold instead (a decoder's
    vocabulary ids: the spec keeps their count, which the factory resolves).

    ``calibrate`` is the type's stage after training: every run fits it on the validation split
    for the best model's tasks of this type before that model is saved for users and tested
    (see :func:`calibrate_tasks`)."""

    def decorator(factory: Callable[..., Task]) -> Callable[..., Task]:
        signature = inspect.signature(factory)

        @functools.wraps(factory)
        def build(*args: Any, **kwargs: Any) -> Task:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            task = factory(*bound.args, **bound.kwargs)
            left_out = ("name", "backbone", *in_weights)
            arguments = {k: _jsonable(v) for k, v in bound.arguments.items() if k not in left_out}
            task.spec = {"type": type_name, **arguments, **task.spec}
            return task

        _DECLARED[build] = TaskType(task_class, calibrate)
        TASKS.register(type_name)(build)
        return build

    return decorator


def task_class(type_name: str) -> type[Task]:
    """The class that owns the labels of a registered task type (for datasets reading raw columns)."""
    declared = _DECLARED.get(TASKS.get(type_name))
    if declared is None:
        raise ConfigError(f"task type '{type_name}' is not registered with core.tasks.task_type; it cannot read labels")
    return declared.task_class


def calibration_stages(model: Any) -> dict[Calibration, list[str]]:
    """The calibration stages of ``model``'s task types, each with the tasks it fits."""
    stages: dict[Calibration, list[str]] = {}
    for name, task in model.tasks.items():
        type_name = task.spec.get("type")
        declared = _DECLARED.get(TASKS.get(type_name)) if type_name else None
        stage = declared.calibrate if declared is not None else None
        if stage is not None:
            stages.setdefault(stage, []).append(name)
    return stages


def calibrate_tasks(model: Any, sources: Sequence[Any], loading: Any) -> dict[str, Any]:
    """Fit every calibration stage of ``model`` on ``sources`` (the validation split), in place;
    returns what each task fitted (empty when no task type has a stage)."""
    fitted: dict[str, Any] = {}
    for stage, names in calibration_stages(model).items():
        fitted.update(stage(model, sources, loading, names))
    return fitted


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def metric_factories(names: Sequence[str], kind: str, num_classes: int | None) -> dict[str, Any]:
    if not names:
        raise ConfigError("a task needs at least one metric")
    return {n: functools.partial(METRICS.get(n), kind, num_classes) for n in names}


def _head(spec: str | dict[str, Any] | None, backbone: nn.Module, out_dim: int) -> nn.Module:
    """``None``: the backbone's own default (``pooled`` on feature maps, ``linear`` on a vector)."""
    return HEADS.build(spec or default_head(backbone), in_dim=feature_width(backbone), out_dim=out_dim)


def check_label_names(label_names: Sequence[str] | None, count: int, task: str) -> list[str] | None:
    if label_names is not None and len(label_names) != count:
        raise ConfigError(f"task '{task}': {len(label_names)} label_names given for {count} classes")
    return list(label_names) if label_names is not None else None


def _text(value: Any) -> str:
    """A cell as text; 2.0 read from a column with gaps is the same label as 2."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _integral(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    return isinstance(value, (float, np.floating)) and float(value).is_integer()


class ClassificationTask(Task):
    """Single-label multi-class: integer targets in [0, num_classes), negative = missing."""

    @classmethod
    def encode_labels(
        cls, raw: np.ndarray, where: str, classes: Sequence[Any] | None = None, row_name: RowName | None = None
    ) -> EncodedLabels:
        """Integer class ids (negative = unknown) or any other values as class names, sorted
        unless ``classes`` fixes their order (and which values are valid)."""
        present = np.array([not is_empty(v) for v in raw])
        values = np.full(len(raw), -1, dtype=np.int64)
        if classes is None and all(_integral(v) for v in raw[present]):
            ids = np.array([int(v) for v in raw[present]], dtype=np.int64)
            values[present] = np.where(ids < 0, -1, ids)
            if not (values >= 0).any():
                raise DataError(f"{where} has no label (every value is empty or negative)")
            return EncodedLabels(values, {"num_classes": max(int(values.max()) + 1, 2)})
        text = np.array([_text(v) if p else "" for v, p in zip(raw, present, strict=True)], dtype=object)
        names = [_text(c) for c in classes] if classes is not None else sorted(set(text[present]))
        if len(names) < 2:
            raise DataError(f"{where} has {len(names)} class(es) {names}; classification needs at least 2")
        lookup = {n: i for i, n in enumerate(names)}
        bad = present & np.array([t not in lookup for t in text])
        if bad.any():
            raise bad_value(where, raw, bad, f"one of the classes {names}", row_name)
        values[present] = [lookup[t] for t in text[present]]
        return EncodedLabels(values, {"num_classes": len(names), "label_names": names})

    def validate_target(self, target: Tensor) -> None:
        if target.is_floating_point():  # pandas gives class ids as floats with NaN; they must be encoded
            raise DataError(
                f"task '{self.name}': class labels (label key '{self.label_key}') are floats; give integer "
                "ids with -1 for unknown, or read the column with a table dataset, which encodes them"
            )
        num_classes = self.spec["num_classes"]
        self.check_range(target, num_classes, "label", f"num_classes={num_classes}", "fix the data or num_classes")

    def postprocess(self, output: Tensor) -> list[Any]:
        probs = output.float().softmax(-1)
        names = self.label_names
        return [
            {"label": names[i] if names else i, "index": i, "probabilities": p.tolist()}
            for i, p in zip(probs.argmax(-1).tolist(), probs, strict=True)
        ]


#: the value pairs a binary column may hold without naming its positive value
_BINARY_TEXT = {"1": 1.0, "0": 0.0, "1.0": 1.0, "0.0": 0.0, "true": 1.0, "false": 0.0, "yes": 1.0, "no": 0.0}


def binary_values(
    raw: np.ndarray, where: str, positive: Any | None = None, row_name: RowName | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """float32 0/1 with NaN = unknown, and [negative, positive] names for yes/no or a declared positive.

    Without ``positive``: 1/0, true/false or yes/no (any case). With it: that value (any case) is 1
    and the column's only other value is 0; the names keep the column's spelling.
    """
    flat = np.ravel(raw)
    present = np.array([not is_empty(v) for v in flat], dtype=bool).reshape(raw.shape)
    text = np.array([_text(v).lower() if not is_empty(v) else "" for v in flat], dtype=object).reshape(raw.shape)
    values = np.full(raw.shape, np.nan, dtype=np.float32)
    if positive is None:
        bad = present & ~np.isin(text, list(_BINARY_TEXT))
        if bad.any():
            raise bad_value(
                where, raw, bad, "1/0, true/false or yes/no (or set 'positive' to the positive value)", row_name
            )
        values[present] = [_BINARY_TEXT[t] for t in text[present]]
        return values, ["no", "yes"] if set(text[present]) == {"yes", "no"} else None
    pos = _text(positive).lower()
    spelling = {t: _text(v) for t, v in zip(np.ravel(text)[::-1], flat[::-1], strict=True)}  # first one wins
    others = sorted(set(text[present]) - {pos})
    if len(others) > 1:
        raise DataError(
            f"{where} holds {len(others) + 1} distinct values ({[pos, *others][:6]}); a binary label with "
            f"positive={positive!r} needs exactly one other value"
        )
    values[present] = (text[present] == pos).astype(np.float32)
    return values, [spelling[others[0]] if others else f"not {positive}", spelling.get(pos, str(positive))]


class BinaryTask(Task):
    """One logit; targets 0/1 (float, NaN = missing)."""

    @classmethod
    def encode_labels(
        cls, raw: np.ndarray, where: str, positive: Any | None = None, row_name: RowName | None = None
    ) -> EncodedLabels:
        values, names = binary_values(raw, where, positive, row_name)
        return EncodedLabels(values, {"label_names": names} if names else {})

    def validate_target(self, target: Tensor) -> None:
        target = target.float()
        seen = target[label_mask(target)]
        if bool(((seen != 0) & (seen != 1)).any()):
            raise DataError(f"task '{self.name}': labels must be 0, 1 or NaN (label key '{self.label_key}')")

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if output.ndim == target.ndim + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        return super().align(output, target.float())

    def probabilities(self, output: Tensor) -> Tensor:
        return output.float().sigmoid()

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return self.probabilities(output), target.long()

    def threshold(self) -> float:
        return 0.5

    def postprocess(self, output: Tensor) -> list[Any]:
        probs = self.probabilities(output.reshape(len(output))).tolist()
        names, threshold = self.label_names, self.threshold()
        labels = [int(p >= threshold) for p in probs]
        return [{"label": names[y] if names else y, "probability": p} for y, p in zip(labels, probs, strict=True)]


class MultilabelTask(BinaryTask):
    """Several independent 0/1 labels per sample (float [N, K], each entry NaN = missing)."""

    @classmethod
    def encode_labels(
        cls,
        raw: np.ndarray,
        where: str,
        separator: str | None = None,
        nothing: str = "-",
        row_name: RowName | None = None,
    ) -> EncodedLabels:
        """Several columns of 0/1 cells ([N, K]; names = the columns, given by the data), or one
        column of ``separator``-joined label names: empty = unknown, ``nothing`` = no label."""
        if separator is None:
            if raw.ndim != 2:
                raise ConfigError(
                    f"{where}: a multilabel task reads several 0/1 columns ('columns') or one column with a 'separator'"
                )
            return EncodedLabels(binary_values(raw, where, row_name=row_name)[0], {"num_labels": raw.shape[1]})
        if raw.ndim != 1:
            raise ConfigError(f"{where}: 'separator' reads one column, not {raw.shape[1]}")
        present = np.array([not is_empty(v) for v in raw])
        sets = [
            {s.strip() for s in _text(v).split(separator) if s.strip()} - {nothing} if p else set()
            for v, p in zip(raw, present, strict=True)
        ]
        names = sorted(set().union(*sets))
        if not names:
            raise DataError(f"{where} names no label")
        values = np.full((len(raw), len(names)), np.nan, dtype=np.float32)
        values[present] = [[float(n in s) for n in names] for s, p in zip(sets, present, strict=True) if p]
        return EncodedLabels(values, {"num_labels": len(names), "label_names": names})

    def postprocess(self, output: Tensor) -> list[Any]:
        names = self.label_names
        return [
            {"labels": [names[i] if names else i for i, q in enumerate(p) if q >= 0.5], "probabilities": p}
            for p in self.probabilities(output).tolist()
        ]


#: a regression label further than this many interquartile ranges outside the quartiles is an outlier
#: worth a warning (a placeholder such as -1e12 or 99999 for "unknown" becomes a training target)
OUTLIER_IQRS = 50.0


def _warn_outliers(values: np.ndarray, where: str, row_name: RowName | None) -> None:
    """Warn, with the first row, about labels far outside the rest (they dominate a squared loss)."""
    seen = values[~np.isnan(values)].astype(np.float64)
    if len(seen) < 4:
        return
    q1, q3 = np.quantile(seen, [0.25, 0.75])
    reach = OUTLIER_IQRS * (q3 - q1)
    far = (values < q1 - reach) | (values > q3 + reach)
    if reach > 0 and far.any():
        row = int(np.flatnonzero(far)[0])
        at = row_name(row) if row_name is not None else f"position {row}"
        warnings.warn(
            f"{where}: {int(far.sum())} label(s) lie more than {OUTLIER_IQRS:g} interquartile ranges outside "
            f"the others ({values[row]:g} at {at}; the middle half lies in [{q1:g}, {q3:g}]); if they "
            "mean 'unknown', leave the cells empty",
            stacklevel=4,
        )


class RegressionTask(Task):
    """Float targets (NaN = missing). The loss sees targets standardised with the training split's
    mean and standard deviation (so raw scales like 1e4 train as well as 1); outputs are scaled back."""

    @classmethod
    def encode_labels(cls, raw: np.ndarray, where: str, row_name: RowName | None = None) -> EncodedLabels:
        present = np.array([not is_empty(v) for v in raw])
        values = np.full(len(raw), np.nan, dtype=np.float32)
        parsed = []
        for v in raw[present]:
            try:
                parsed.append(float(v))
            except (TypeError, ValueError):
                parsed.append(None)
        bad = present.copy()
        bad[present] = [p is None or not np.isfinite(p) for p in parsed]
        if bad.any():
            raise bad_value(where, raw, bad, "finite numbers", row_name)
        values[present] = np.array(parsed, dtype=np.float64)
        _warn_outliers(values, where, row_name)
        return EncodedLabels(values, {"out_dim": 1})

    @classmethod
    def train_updates(cls, values: np.ndarray) -> dict[str, Any]:
        seen = values[~np.isnan(values)].astype(np.float64)
        return {"target_mean": float(seen.mean()), "target_std": float(seen.std()) or 1.0} if len(seen) else {}

    def _scale(self) -> tuple[float, float]:
        return float(self.spec.get("target_mean", 0.0)), float(self.spec.get("target_std", 1.0))

    def align(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        if output.ndim == target.ndim + 1 and output.shape[-1] == 1:
            output = output.squeeze(-1)
        return super().align(output, target.float())

    def loss_target(self, target: Tensor) -> Tensor:
        mean, std = self._scale()
        return (target - mean) / std

    def value(self, output: Tensor) -> Tensor:
        mean, std = self._scale()
        return output.float() * std + mean

    def metric_inputs(self, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        return self.value(output), target

    def postprocess(self, output: Tensor) -> list[Any]:
        values = self.value(output)
        if values.ndim == 2 and values.shape[-1] == 1:
            values = values.squeeze(-1)
        return [{"value": v} for v in values.tolist()]


@task_type("classification", ClassificationTask)
def classification(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    head: str | dict[str, Any] | None = None,
    metrics: Sequence[str] = ("accuracy", "f1_macro"),
    label_key: str | None = None,
    weight: float = 1.0,
    label_smoothing: float = 0.0,
    label_names: Sequence[str] | None = None,
) -> Task:
    """Multi-class classification with cross-entropy."""
    if num_classes < 2:
        raise ConfigError(f"task '{name}': num_classes must be >= 2, got {num_classes}")
    return ClassificationTask(
        name=name,
        head=_head(head, backbone, num_classes),
        loss_fn=functools.partial(F.cross_entropy, label_smoothing=label_smoothing),
        metrics=metric_factories(metrics, "multiclass", num_classes),
        label_key=label_key or name,
        weight=weight,
        label_names=check_label_names(label_names, num_classes, name),
    )


def bce_loss(pos_weight: float | None) -> Any:
    if pos_weight is None:
        return F.binary_cross_entropy_with_logits

    def loss(output: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        return F.binary_cross_entropy_with_logits(
            output, target, pos_weight=output.new_tensor(pos_weight), reduction=reduction
        )

    return loss


@task_type("binary", BinaryTask)
def binary(
    name: str,
    backbone: nn.Module,
    head: str | dict[str, Any] | None = None,
    metrics: Sequence[str] = ("auroc", "accuracy"),
    label_key: str | None = None,
    weight: float = 1.0,
    pos_weight: float | None = None,
    label_names: Sequence[str] | None = None,
) -> Task:
    """Binary classification with BCE on one logit; ``pos_weight`` counters class imbalance;
    ``label_names`` = [negative, positive] names the prediction's label."""
    return BinaryTask(
        name=name,
        head=_head(head, backbone, 1),
        loss_fn=bce_loss(pos_weight),
        metrics=metric_factories(metrics, "binary", None),
        label_key=label_key or name,
        weight=weight,
        label_names=check_label_names(label_names, 2, name),
    )


@task_type("multilabel", MultilabelTask)
def multilabel(
    name: str,
    backbone: nn.Module,
    num_labels: int,
    head: str | dict[str, Any] | None = None,
    metrics: Sequence[str] = ("auroc", "f1_macro"),
    label_key: str | None = None,
    weight: float = 1.0,
    label_names: Sequence[str] | None = None,
) -> Task:
    """Several independent binary labels per sample; each entry may be missing (NaN)."""
    return MultilabelTask(
        name=name,
        head=_head(head, backbone, num_labels),
        loss_fn=F.binary_cross_entropy_with_logits,
        metrics=metric_factories(metrics, "multilabel", None),
        label_key=label_key or name,
        weight=weight,
        label_names=check_label_names(label_names, num_labels, name),
    )


_REGRESSION_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}


@task_type("regression", RegressionTask)
def regression(
    name: str,
    backbone: nn.Module,
    out_dim: int = 1,
    head: str | dict[str, Any] | None = None,
    loss: str = "mse",
    metrics: Sequence[str] = ("mae", "pearson"),
    label_key: str | None = None,
    weight: float = 1.0,
    target_mean: float = 0.0,
    target_std: float = 1.0,
) -> Task:
    """Real-valued targets; ``loss`` is one of mse, l1, huber, on targets standardised with
    ``target_mean`` / ``target_std`` (a table dataset supplies the training split's)."""
    if loss not in _REGRESSION_LOSSES:
        raise ConfigError(f"task '{name}': unknown regression loss '{loss}'; valid: {', '.join(_REGRESSION_LOSSES)}")
    if not target_std > 0:
        raise ConfigError(f"task '{name}': target_std must be > 0, got {target_std}")
    return RegressionTask(
        name=name,
        head=_head(head, backbone, out_dim),
        loss_fn=_REGRESSION_LOSSES[loss],
        metrics=metric_factories(metrics, "regression", None),
        label_key=label_key or name,
        weight=weight,
    )


def build_task(name: str, spec: dict[str, Any], backbone: nn.Module) -> Task:
    """Build a task from its config entry: ``{"type": ..., **kwargs}``."""
    spec = dict(spec)
    if "type" not in spec:
        raise ConfigError(f"task '{name}' needs a 'type'; valid types: {', '.join(TASKS.names())}")
    task_type_name = spec.pop("type")
    return TASKS.build({"name": task_type_name, **spec}, name=name, backbone=backbone)
