"""Label columns of a table, each read by the task type that owns its meaning (``core.tasks``).

A dataset's ``labels`` maps each task to its type, ``{task: type}``, or to
``{type, column | columns, **options}``: ``column`` defaults to the task's name, ``columns``
(several 0/1 columns) is the multilabel form, and the options are the type's
``encode_labels`` arguments (``classes`` for classification, ``positive`` for binary,
``separator`` for multilabel).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError, DataError
from core.registry import check_kwargs
from core.task import EncodedLabels, Task
from core.tasks import task_class

from .read import file_row

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class LabelColumn:
    task: str
    type: str
    columns: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    multi_column: bool = False  # read [N, K] from several columns

    @property
    def owner(self) -> type[Task]:
        return task_class(self.type)


def label_columns(labels: Mapping[str, str | Mapping[str, Any]]) -> list[LabelColumn]:
    """Parse a dataset's ``labels`` section; the task types and their options are checked here."""
    if not labels:
        raise ConfigError("a table dataset needs 'labels': {task: type} or {task: {type, column, ...}}")
    out = []
    for task, spec in labels.items():
        spec = {"type": spec} if isinstance(spec, str) else dict(spec)
        if "type" not in spec:
            raise ConfigError(f"labels.{task} needs a 'type' (classification, binary, multilabel, regression, ...)")
        kind = spec.pop("type")
        if "column" in spec and "columns" in spec:
            raise ConfigError(f"labels.{task}: give 'column' or 'columns', not both")
        multi = "columns" in spec
        columns = list(spec.pop("columns")) if multi else [str(spec.pop("column", task))]
        label = LabelColumn(task, kind, columns, spec, multi)
        check_kwargs(
            label.owner.encode_labels, {"raw": None, "where": None, "row_name": None, **spec}, f"labels.{task} ({kind})"
        )
        out.append(label)
    return out


def read_labels(frame: pd.DataFrame, label: LabelColumn, source: str) -> EncodedLabels:
    """Encode one task's label column(s) of ``frame``; empty cells are unknown labels."""
    missing = [c for c in label.columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: label column(s) {missing} of task '{label.task}' are missing "
            f"(the file has {list(frame.columns)})"
        )
    cells = frame[label.columns].astype(object)
    raw = cells.where(cells.notna(), None).to_numpy()
    names = f"columns {label.columns}" if label.multi_column else f"column '{label.columns[0]}'"
    given = raw if label.multi_column else raw[:, 0]
    encoded = label.owner.encode_labels(
        given, f"{source}: label {names}", row_name=lambda i: file_row(frame.index, i), **label.options
    )
    if label.multi_column:
        encoded.updates.setdefault("label_names", list(label.columns))
    return encoded
