"""The ``images`` dataset: COCO detection files and/or image-folder / CSV classification sets.

Each entry of ``sources`` is one dataset with the tasks it labels. One COCO file whose images also
carry image-level labels is the multi-labelled regime (one shared source); a detection file plus
a separate classification set (different images) is the one-dataset-per-task regime.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from core.data import DATASETS, DataBundle, Source
from core.errors import ConfigError, DataError
from core.spec import from_dict

from .records import ClassSpec, ImageDataset, collate
from .sources import parse_source
from .transforms import Augment, build_transform, size_hw

_CHECKED = {"val": "validated (model selection)", "test": "tested"}


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
    specs = [parse_source(s, f"data.sources[{i}]") for i, s in enumerate(sources)]
    for s in specs:
        absent = [split for split in ("val", "test") if split not in s.splits()]
        if absent:
            warnings.warn(
                f"data source '{s.name}' gives no {' and no '.join(absent)} {s.format}: its task(s) "
                f"{s.tasks()} are never {' nor '.join(_CHECKED[a] for a in absent)}; add "
                f"{' and '.join(f'{a}: <{s.format}>' for a in absent)} to the source",
                stacklevel=2,
            )
    read = {(s.name, split): s.read(path) for s in specs for split, path in s.splits().items()}
    source_tasks = {s.name: [t for t in s.tasks() if keep is None or t in keep] for s in specs}
    # classes of every image-level task, from the training records of every source labelling it
    classes: dict[str, ClassSpec] = {}
    categories: dict[str, list[str]] = {}
    for s in specs:
        records, cats = read[(s.name, "train")]
        boxes = s.detection_task()
        if boxes and cats is not None:
            if categories.setdefault(boxes, cats) != cats:
                raise DataError(f"source '{s.name}': categories {cats} differ from {categories[boxes]}")
        for task in s.tasks():
            if task == boxes:
                continue
            seen = {v for r in records for v in _names(r.labels.get(task))}
            names = label_names.get(task) or sorted(seen | set(classes[task].names if task in classes else []))
            classes[task] = ClassSpec(list(names), multilabel=task in s.multilabel_tasks())
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
            det = s.detection_task() if s.detection_task() in tasks else None
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
