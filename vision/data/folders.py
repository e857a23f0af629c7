"""Image-level classification data: an image folder (one sub-folder per class) or a CSV file."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from core.errors import DataError

from .images import EXTENSIONS
from .records import ImageRecord


def load_image_folder(root: str | Path, task: str) -> list[ImageRecord]:
    """``root/<class name>/<image>``: every image labelled for ``task`` with its folder's name."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    records = [
        ImageRecord(path=p, image_id=str(p.relative_to(root)), labels={task: class_dir.name})
        for class_dir in sorted(d for d in root.iterdir() if d.is_dir())
        for p in sorted(class_dir.rglob("*"))
        if p.suffix.lower() in EXTENSIONS
    ]
    if not records:
        raise DataError(f"image folder {root} has no images in class sub-folders (extensions: {', '.join(EXTENSIONS)})")
    return records


def load_csv(
    path: str | Path,
    tasks: Sequence[str],
    image_root: str | Path | None = None,
    path_column: str = "image",
    multilabel: Sequence[str] = (),
    separator: str = ";",
) -> list[ImageRecord]:
    """One row per image: ``path_column`` (relative to ``image_root``, default the CSV's folder) and a
    column per task holding a class name; empty = missing; multi-label cells join names with ``separator``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    root = Path(image_root) if image_root is not None else path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        absent = [c for c in (path_column, *tasks) if c not in columns]
        if absent:
            raise DataError(f"{path}: missing column(s) {absent}; it has {columns}")
        records = []
        for row_number, row in enumerate(reader, start=2):  # line 1 is the header
            labels: dict[str, str | list[str] | None] = {}
            for task in tasks:
                cell = (row[task] or "").strip()
                if not cell:
                    labels[task] = None
                elif task in multilabel:
                    labels[task] = [v.strip() for v in cell.split(separator) if v.strip()]
                else:
                    labels[task] = cell
            image = root / row[path_column]
            if not image.is_file():
                raise DataError(f"{path}, line {row_number}: image file {image} does not exist")
            records.append(ImageRecord(path=image, image_id=f"{path.name}:{row_number}", labels=labels))
    if not records:
        raise DataError(f"CSV file {path} has no rows")
    return records
