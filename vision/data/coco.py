"""COCO-format detection files: read (with validation that names the file and annotation id) and write.

Beyond standard COCO, an image entry may carry image-level labels for classification tasks:
``"labels": {"count": "3", "tags": ["a", "b"]}``; ``"labels": {"<detection task>": null}`` marks
an image whose boxes are unknown (not "no objects"), so detection ignores it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError

from .records import ImageRecord

#: boxes may overhang the image by this much (rounding in annotation tools) before it is an error
TOLERANCE = 1.0


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"COCO file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict) or "images" not in data:
        raise DataError(f"{path} is not a COCO file: it needs an 'images' list")
    return data


def load_coco(
    path: str | Path, image_root: str | Path | None = None, detection_task: str | None = "detection"
) -> tuple[list[ImageRecord], list[str]]:
    """Records and category names (contiguous indices follow the categories sorted by id).

    ``image_root`` defaults to the JSON file's folder; ``file_name`` is relative to it.
    """
    path = Path(path)
    data = _load_json(path)
    root = Path(image_root) if image_root is not None else path.parent
    categories = sorted(data.get("categories", []), key=lambda c: c["id"])
    cat_ids = [c["id"] for c in categories]
    if len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{path}: duplicate category ids in {cat_ids}")
    index_of = {cid: i for i, cid in enumerate(cat_ids)}
    records: dict[Any, ImageRecord] = {}
    for image in data["images"]:
        for key in ("id", "file_name", "width", "height"):
            if key not in image:
                raise DataError(f"{path}: image entry {image.get('id', image)} has no '{key}'")
        if image["id"] in records:
            raise DataError(f"{path}: duplicate image id {image['id']}")
        labels = dict(image.get("labels") or {})
        unlabelled = detection_task is not None and detection_task in labels and labels[detection_task] is None
        records[image["id"]] = ImageRecord(
            path=root / image["file_name"],
            image_id=image["id"],
            width=int(image["width"]),
            height=int(image["height"]),
            boxes=None if unlabelled else np.zeros((0, 4), np.float32),
            box_labels=None if unlabelled else np.zeros(0, np.int64),
            labels={k: v for k, v in labels.items() if k != detection_task},
        )
    missing = [r for r in records.values() if not r.path.is_file()]
    if missing:
        shown = ", ".join(f"{r.path} (image id {r.image_id})" for r in missing[:3])
        raise DataError(f"{path}: {len(missing)} image file(s) do not exist: {shown}; check image_root")
    boxes: dict[Any, list[list[float]]] = {k: [] for k in records}
    labels_of: dict[Any, list[int]] = {k: [] for k in records}
    for ann in data.get("annotations", []):
        aid = ann.get("id", "?")
        where = f"{path}: annotation id {aid}"
        if ann.get("image_id") not in records:
            raise DataError(f"{where} refers to image id {ann.get('image_id')}, which is not in 'images'")
        if ann.get("category_id") not in index_of:
            raise DataError(f"{where} has category_id {ann.get('category_id')}, not in the categories list {cat_ids}")
        if ann.get("iscrowd", 0):
            continue  # crowd regions are not individual objects
        record = records[ann["image_id"]]
        if record.boxes is None:
            raise DataError(f"{where} gives a box for image id {record.image_id}, which is marked as unlabelled")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(math.isfinite(float(v)) for v in bbox):
            raise DataError(f"{where}: bbox must be 4 finite numbers [x, y, width, height], got {bbox}")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise DataError(f"{where}: box has non-positive size (width={w}, height={h}); remove or fix it")
        if x < -TOLERANCE or y < -TOLERANCE or x + w > record.width + TOLERANCE or y + h > record.height + TOLERANCE:
            raise DataError(
                f"{where}: box [x={x}, y={y}, w={w}, h={h}] lies outside image id {record.image_id} "
                f"({record.width}x{record.height}); clip it to the image"
            )
        boxes[ann["image_id"]].append([max(x, 0.0), max(y, 0.0), min(x + w, record.width), min(y + h, record.height)])
        labels_of[ann["image_id"]].append(index_of[ann["category_id"]])
    for key, record in records.items():
        if record.boxes is not None and boxes[key]:
            record.boxes = np.asarray(boxes[key], np.float32)
            record.box_labels = np.asarray(labels_of[key], np.int64)
    return list(records.values()), [str(c.get("name", c["id"])) for c in categories]


def write_coco(
    path: str | Path,
    records: Sequence[ImageRecord],
    categories: Sequence[str],
    detection_task: str | None = "detection",
    image_root: str | Path | None = None,
) -> Path:
    """Write records as COCO JSON; category ids are 1-based, file names relative to ``image_root``."""
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    images, annotations = [], []
    for record in records:
        entry: dict[str, Any] = {
            "id": record.image_id,
            "file_name": str(Path(record.path).relative_to(root)),
            "width": record.width,
            "height": record.height,
        }
        labels: dict[str, Any] = dict(record.labels)
        if detection_task is not None and record.boxes is None:
            labels[detection_task] = None
        if labels:
            entry["labels"] = labels
        images.append(entry)
        if record.boxes is None:
            continue
        for box, label in zip(record.boxes.tolist(), record.box_labels.tolist(), strict=True):
            x1, y1, x2, y2 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record.image_id,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": 0,
                }
            )
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(categories)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
