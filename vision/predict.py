"""The ``image`` predictor: a saved vision model on an image file, a folder of images, or (from
``model.predict``) image paths and ``[C, H, W]`` tensors of any size.

Writes the JSON records (returned to ``jointtrain predict``) and, for each image with a detection
task, a PNG with the confident boxes drawn beside the JSON: ``<out stem>_<image stem>.png``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
from torchvision.io import write_png
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from core.data import Source
from core.errors import ConfigError, DataError
from core.model import JointModel
from core.predict import LABELLED, PREDICTORS

from .data.coco import load_coco
from .data.folders import load_csv, load_image_folder
from .data.images import EXTENSIONS, read_image
from .data.records import ClassSpec, ImageDataset, collate
from .data.transforms import build_transform
from .tasks import DetectionTask

DRAW_MIN_SCORE = 0.3  # the picture shows confident boxes; the JSON lists every detection
DRAW_MIN_SIDE = 256  # small images are enlarged so labels stay readable


def _images(inputs: Any) -> list[tuple[str, Path | None, torch.Tensor | None]]:
    """``(name, file, tensor)`` per image: a file or folder path, a list of paths, or ``[C, H, W]``
    tensors (one, or a list; any size). Files are read one at a time, when they are predicted."""
    if isinstance(inputs, torch.Tensor) and inputs.ndim == 3:
        inputs = [inputs]
    if isinstance(inputs, (str, Path)):
        path = Path(inputs)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in EXTENSIONS)
            if not files:
                raise DataError(f"folder {path} holds no images ({', '.join(EXTENSIONS)})")
            return [(str(f), f, None) for f in files]
        inputs = [path]
    if isinstance(inputs, (list, tuple)) and inputs:
        images: list[tuple[str, Path | None, torch.Tensor | None]] = []
        for i, item in enumerate(inputs):
            if isinstance(item, (str, Path)):
                images.append((str(item), Path(item), None))
            elif isinstance(item, torch.Tensor) and item.ndim == 3:
                images.append((f"image {i}", None, item))
            else:
                raise DataError(f"image input {i}: give a file path or a [C, H, W] tensor, not {type(item).__name__}")
        return images
    raise DataError(
        "an image model reads a file or folder path, a list of paths, [C, H, W] tensors of any size, or a "
        f"[N, C, H, W] batch already at the model's image_size; got {type(inputs).__name__}"
    )


@PREDICTORS.register("image")
def predict_images(
    model: JointModel, inputs: Any, out_path: Path | None = None, min_score: float | None = None
) -> list[dict[str, Any]]:
    """Per image: every task's prediction; detection boxes are in the original image's pixels, those
    scoring below ``min_score`` left out (None: every box the task decodes, down to its ``score_threshold``)."""
    size = model.extra.get("image_size")
    if size is None:
        raise DataError("this model records no 'image_size'; was it trained on an image dataset?")
    detection = [t for t, task in model.tasks.items() if isinstance(task, DetectionTask)]
    if min_score is not None and not detection:
        raise ConfigError(f"min_score applies to detection tasks; this model's tasks are {', '.join(model.tasks)}")
    device = next(model.parameters()).device
    records = []
    for name, file, image in _images(inputs):
        image = read_image(file) if file is not None else image
        h, w = image.shape[-2:]
        resized = TF.resize(image, list(size), antialias=True)
        out = model.predict(resized[None].to(device))
        scale = torch.tensor([w / size[1], h / size[0], w / size[1], h / size[0]])
        record: dict[str, Any] = {"image": name}
        for task_name, preds in out.items():
            if task_name in detection:
                record[task_name] = [
                    {**d, "box": [round(v, 2) for v in (torch.tensor(d["box"]) * scale).tolist()]}
                    for d in preds[0]
                    if min_score is None or d["score"] >= min_score
                ]
                if out_path is not None and file is not None:
                    _draw(image, record[task_name], Path(out_path).with_name(f"{Path(out_path).stem}_{file.stem}.png"))
            else:
                record[task_name] = preds[0]
        records.append(record)
    return records


def _draw(image: torch.Tensor, detections: list[dict[str, Any]], path: Path) -> None:
    """Boxes of confident detections on a copy enlarged to a viewable size (the JSON keeps them all)."""
    shown = [d for d in detections if d["score"] >= DRAW_MIN_SCORE]
    h, w = image.shape[-2:]
    zoom = max(1, math.ceil(DRAW_MIN_SIDE / min(h, w)))
    big = TF.resize(image, [h * zoom, w * zoom], interpolation=TF.InterpolationMode.NEAREST)
    boxes = torch.tensor([d["box"] for d in shown], dtype=torch.float32).reshape(-1, 4) * zoom
    labels = [f"{d['label']} {d['score']:.2f}" for d in shown]
    drawn = draw_bounding_boxes(big, boxes, labels=labels, colors="lime", width=2) if shown else big
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(drawn, str(path))


@LABELLED.register("image")
def labelled_images(model: JointModel, path: str | Path) -> list[Source]:
    """Labelled images of the user's, read as training read them but with the model's class names: a
    COCO file (.json, its boxes label the detection task), a CSV (an ``image`` column and a column per
    image-level task) or a folder of class sub-folders (the model's one image-level task)."""
    path = Path(path)
    detection = next((t for t, task in model.tasks.items() if isinstance(task, DetectionTask)), None)
    image_level = [t for t in model.tasks if t != detection]
    multilabel = [t for t in image_level if model.tasks[t].spec.get("type") == "multilabel"]
    if path.suffix.lower() == ".json":
        if detection is None:
            raise ConfigError(f"{path}: a COCO file labels a detection task; this model has none ({image_level})")
        records, categories = load_coco(path, None, detection)
        names = model.tasks[detection].label_names
        if names and categories != names:
            raise DataError(f"{path}: categories {categories} are not the model's {names} (same names, same ids order)")
        tasks = [detection, *[t for t in image_level if any(r.labels.get(t) is not None for r in records)]]
    elif path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        tasks = [t for t in image_level if t in header]
        if not tasks:
            raise DataError(f"{path} has no column named after an image-level task ({', '.join(image_level)})")
        records = load_csv(path, tasks, multilabel=multilabel)
    elif path.is_dir():
        if len(image_level) != 1:
            raise DataError(
                f"{path}: class sub-folders label one task, this model has {len(image_level)} image-level tasks "
                f"({', '.join(image_level)}); give a CSV with an 'image' column and a column per task"
            )
        tasks, records = image_level, load_image_folder(path, image_level[0])
    else:
        raise DataError(f"{path}: give a COCO .json, a .csv (image + task columns) or a folder of class sub-folders")
    classes = {t: ClassSpec(list(model.tasks[t].label_names or []), t in multilabel) for t in tasks if t != detection}
    missing = [t for t, c in classes.items() if not c.names]
    if missing:
        raise DataError(f"tasks {missing} of this model record no class names, so labels by name cannot be read")
    transform = build_transform(model.extra["image_size"])
    dataset = ImageDataset(records, detection if detection in tasks else None, classes, transform)
    return [Source(path.name, dataset, tasks, collate_fn=collate, input_key="image")]
