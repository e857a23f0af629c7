"""The ``images`` dataset: COCO detection files and/or image-folder / CSV classification sets.

Each entry of ``sources`` is one dataset with the tasks it labels. One COCO file whose images also
carry image-level labels is the multi-labelled regime (one shared source); a detection file plus
a separate classification set (different images) is the one-dataset-per-task regime.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from core.data import DATASETS, DataBundle, Source
from core.errors import ConfigError, DataError
from core.spec import from_dict

from .coco import load_coco
from .folders import load_csv, load_image_folder
from .records import ClassSpec, ImageDataset, ImageRecord, collate
from .transforms import Augment, build_transform, size_hw

SPLITS = ("train", "val", "test")
_CHECKED = {"val": "validated (model selection)", "test": "tested"}


@dataclass
class SourceSpec:
    name: str
    format: str  # coco | folder | csv
    train: str
    val: str | None = None
    test: str | None = None
    image_root: str | None = None  # coco / csv: folder the file names are relative to
    detection: str | None = None  # coco: the detection task its boxes label
    labels: list[str] = field(default_factory=list)  # coco image-level / csv columns: classification tasks
    multilabel: list[str] = field(default_factory=list)  # those of ``labels`` with several names per image
    task: str | None = None  # folder: the classification task its sub-folders name
    path_column: str = "image"  # csv


def _read(spec: SourceSpec, split_path: str) -> tuple[list[ImageRecord], list[str] | None]:
    if spec.format == "coco":
        return load_coco(split_path, spec.image_root, spec.detection)
    if spec.format == "folder":
        if not spec.task:
            raise ConfigError(f"source '{spec.name}': a folder source needs 'task' (the task its sub-folders name)")
        return load_image_folder(split_path, spec.task), None
    if spec.format == "csv":
        return load_csv(split_path, spec.labels, spec.image_root, spec.path_column, spec.multilabel), None
    raise ConfigError(f"source '{spec.name}': unknown format '{spec.format}'; valid: coco, folder, csv")


def _tasks_of(spec: SourceSpec) -> list[str]:
    tasks = [spec.detection] if spec.format == "coco" and spec.detection else []
    tasks += [spec.task] if spec.format == "folder" and spec.task else list(spec.labels)
    return tasks


@DATASETS.register("images")
def images(
    sources: Sequence[dict[str, Any]],
    image_size: int | Sequence[int] = 224,
    augment: dict[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    label_names: dict[str, list[str]] | None = None,
) -> DataBundle:
    """Build train/val/test sources; images are resized to ``image_size`` (boxes follow).

    Class names come from the training split unless ``label_names`` fixes them (task -> ordered
    names). ``tasks`` keeps only those tasks (single-task runs). ``augment``: see ``Augment``.
    """
    if not sources:
        raise ConfigError("the images dataset needs at least one entry in 'sources'")
    keep, label_names = tasks, label_names or {}
    specs = [from_dict(SourceSpec, s, f"data.sources[{i}]") for i, s in enumerate(sources)]
    for s in specs:
        absent = [split for split in ("val", "test") if not getattr(s, split)]
        if absent:
            warnings.warn(
                f"data source '{s.name}' gives no {' and no '.join(absent)} {s.format}: its task(s) "
                f"{_tasks_of(s)} are never {' nor '.join(_CHECKED[a] for a in absent)}; add "
                f"{' and '.join(f'{a}: <{s.format}>' for a in absent)} to the source",
                stacklevel=2,
            )
    read = {(s.name, split): _read(s, getattr(s, split)) for s in specs for split in SPLITS if getattr(s, split)}
    source_tasks = {s.name: [t for t in _tasks_of(s) if keep is None or t in keep] for s in specs}
    # classes of every image-level task, from the training records of every source labelling it
    classes: dict[str, ClassSpec] = {}
    categories: dict[str, list[str]] = {}
    for s in specs:
        records, cats = read[(s.name, "train")]
        if s.detection and cats is not None:
            if categories.setdefault(s.detection, cats) != cats:
                raise DataError(f"source '{s.name}': categories {cats} differ from {categories[s.detection]}")
        for task in _tasks_of(s):
            if task == s.detection:
                continue
            seen = {v for r in records for v in _names(r.labels.get(task))}
            names = label_names.get(task) or sorted(seen | set(classes[task].names if task in classes else []))
            classes[task] = ClassSpec(list(names), multilabel=task in s.multilabel)
    resize = size_hw(image_size)
    train_transform = build_transform(resize, from_dict(Augment, augment, "data.augment") if augment else None)
    eval_transform = build_transform(resize)

    def make(split: str) -> list[Source]:
        out = []
        for s in specs:
            tasks = source_tasks[s.name]
            if (s.name, split) not in read or not tasks:
                continue
            records, _ = read[(s.name, split)]
            det = s.detection if s.detection in tasks else None
            dataset = ImageDataset(
                records,
                det,
                {t: classes[t] for t in tasks if t != det},
                train_transform if split == "train" else eval_transform,
            )
            out.append(Source(s.name, dataset, tasks, collate_fn=collate, input_key="image"))
        return out

    updates: dict[str, dict[str, Any]] = {t: {"num_classes": len(c), "label_names": c} for t, c in categories.items()}
    for t, c in classes.items():
        updates[t] = {"num_labels" if c.multilabel else "num_classes": len(c.names), "label_names": c.names}
    wanted = {t for ts in source_tasks.values() for t in ts}
    return DataBundle(
        train=make("train"),
        val=make("val"),
        test=make("test"),
        task_updates={t: u for t, u in updates.items() if t in wanted},
        extra={"predictor": "image", "image_size": list(resize)},
    )


def _names(value: str | list[str] | None) -> list[str]:
    return [] if value is None else (value if isinstance(value, list) else [value])
