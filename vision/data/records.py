"""One image with its labels, the dataset over such records, and the collate function.

A sample is a dict: ``image`` (3, H, W) uint8 at the model's input size, ``size`` (the original
H, W), ``index``, then one entry per task: a detection task maps to ``{"boxes", "labels", "source"}`` or
``None`` (no box labels for this image), a classification task to a class index (-1 = missing),
a multi-label task to a multi-hot float vector (NaN = missing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from core.errors import DataError

from .images import read_image

Label = str | list[str] | None


@dataclass
class ImageRecord:
    path: Path
    image_id: int | str
    width: int | None = None  # declared size (COCO); checked against the file when read
    height: int | None = None
    boxes: np.ndarray | None = None  # (n, 4) xyxy pixels; None = no box labels for this image
    box_labels: np.ndarray | None = None  # (n,) contiguous category indices
    labels: dict[str, Label] = field(default_factory=dict)  # image-level labels by task (class names)


@dataclass(frozen=True)
class ClassSpec:
    """Class names of an image-level task; ``multilabel``: several names per image."""

    names: list[str]
    multilabel: bool = False

    def encode(self, value: Label, record: ImageRecord, task: str) -> torch.Tensor:
        if value is None:
            return torch.full((len(self.names),), float("nan")) if self.multilabel else torch.tensor(-1)
        values = value if isinstance(value, list) else [value]
        unknown = [v for v in values if v not in self.names]
        if unknown:
            raise DataError(
                f"image {record.path} (id {record.image_id}): task '{task}' label(s) {unknown} are not among "
                f"its classes {self.names}"
            )
        if not self.multilabel:
            if len(values) != 1:
                raise DataError(f"image {record.path}: task '{task}' is single-label but has {values}")
            return torch.tensor(self.names.index(values[0]))
        hot = torch.zeros(len(self.names))
        hot[[self.names.index(v) for v in values]] = 1.0
        return hot


class ImageDataset(Dataset):
    """Records read from disk, transformed (boxes follow the image), labelled for ``tasks``."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        detection_task: str | None,
        classes: dict[str, ClassSpec],
        transform: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> None:
        self.records, self.detection_task, self.classes, self.transform = (
            list(records),
            detection_task,
            classes,
            transform,
        )

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image = read_image(record.path, f"image id {record.image_id}")
        h, w = image.shape[-2:]
        if record.width is not None and (record.width, record.height) != (w, h):
            raise DataError(
                f"image {record.path} (id {record.image_id}) is {w}x{h} but its annotation file says "
                f"{record.width}x{record.height}; fix width/height there"
            )
        boxes = record.boxes if record.boxes is not None else np.zeros((0, 4), np.float32)
        box_labels = record.box_labels if record.box_labels is not None else np.zeros(0, np.int64)
        sample = self.transform(
            {
                "image": tv_tensors.Image(image),
                "boxes": tv_tensors.BoundingBoxes(torch.as_tensor(boxes).float(), format="XYXY", canvas_size=(h, w)),
                "labels": torch.as_tensor(box_labels).long(),
            }
        )
        out: dict[str, Any] = {"image": sample["image"].as_subclass(torch.Tensor), "size": torch.tensor([h, w])}
        out["index"] = torch.tensor(index)
        if self.detection_task is not None:
            has_boxes = record.boxes is not None
            out[self.detection_task] = (
                {
                    "boxes": sample["boxes"].as_subclass(torch.Tensor),
                    "labels": sample["labels"],
                    "source": f"{record.path} (image id {record.image_id})",  # for error messages
                }
                if has_boxes
                else None
            )
        for task, spec in self.classes.items():
            out[task] = spec.encode(record.labels.get(task), record, task)
        return out

    def labelled_counts(self) -> dict[str, int]:
        counts = {t: sum(r.labels.get(t) is not None for r in self.records) for t in self.classes}
        if self.detection_task is not None:
            counts[self.detection_task] = sum(r.boxes is not None for r in self.records)
        return counts


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images and image-level labels; keep detection targets as a list (variable box counts)."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        is_tensor = all(isinstance(v, torch.Tensor) for v in values)
        batch[key] = torch.stack(values) if is_tensor else values
    return batch
