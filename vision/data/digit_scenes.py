"""Bundled real demo: "digit scenes" composed from scikit-learn's 1797 handwritten digits.

Each scene is a small canvas holding 1..``max_digits`` digits at random positions and scales,
never overlapping. Tasks: ``detection`` (every digit, 10 classes) and ``count`` (how many digits,
an image-level label). The digit samples are split first, so validation and test scenes only use
handwriting never seen in training. Scenes are generated deterministically from ``seed``, written
once as PNG + COCO JSON under ``root`` and then read by the same ``images`` dataset users use.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.data import DATASETS, DataBundle
from core.errors import ConfigError

from .bundle import images
from .coco import write_coco
from .records import ImageRecord

FORMAT = "digit_scenes/1"  # bump when the generator changes, so stale caches are not reused
CATEGORIES = [str(d) for d in range(10)]
TASKS = ("detection", "count")


def _glyph(digit: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The 8x8 digit scaled to ``size`` px (alpha in [0, 1]) and its tight ink box (x0, y0, x1, y1)."""
    image = Image.fromarray((digit * (255.0 / 16.0)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
    alpha = np.asarray(image, np.float32) / 255.0
    rows, cols = np.nonzero(alpha.max(1) > 0.25)[0], np.nonzero(alpha.max(0) > 0.25)[0]
    return alpha, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def render_scene(
    rng: np.random.Generator,
    digits: np.ndarray,
    targets: np.ndarray,
    canvas: int,
    max_digits: int,
    sizes: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One RGB scene (H, W, 3) uint8 with its xyxy boxes and digit labels."""
    background = rng.uniform(0, 60, 3)
    image = np.clip(background + rng.normal(0, 6, (canvas, canvas, 3)), 0, 255)
    boxes: list[list[int]] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(1, max_digits + 1))):
        pick = int(rng.integers(len(digits)))
        size = int(rng.integers(sizes[0], sizes[1] + 1))
        for _attempt in range(60):
            alpha, (x0, y0, x1, y1) = _glyph(digits[pick], size)
            ox, oy = int(rng.integers(-x0, canvas - x1 + 1)), int(rng.integers(-y0, canvas - y1 + 1))
            box = [ox + x0, oy + y0, ox + x1, oy + y1]
            # one pixel of margin: touching digits would make counting ambiguous
            if all(box[0] > b[2] or box[2] < b[0] or box[1] > b[3] or box[3] < b[1] for b in boxes):
                break
            size = max(sizes[0] // 2, size - 1)
        else:
            continue  # the canvas is too crowded for this digit: the scene holds fewer
        region = (slice(max(oy, 0), oy + size), slice(max(ox, 0), ox + size))
        a = alpha[
            max(-oy, 0) : max(-oy, 0) + image[region].shape[0], max(-ox, 0) : max(-ox, 0) + image[region].shape[1]
        ]
        color = rng.uniform(150, 255, 3)
        image[region] = image[region] * (1 - a[..., None]) + color * a[..., None]
        boxes.append(box)
        labels.append(int(targets[pick]))
    return image.astype(np.uint8), np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)


def _digit_split(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    perm = np.random.default_rng(seed).permutation(len(digits.target))
    n = len(perm)
    parts = {"train": perm[: int(0.6 * n)], "val": perm[int(0.6 * n) : int(0.8 * n)], "test": perm[int(0.8 * n) :]}
    return {k: (digits.images[idx], digits.target[idx]) for k, idx in parts.items()}


def generate(
    directory: Path, counts: dict[str, int], canvas: int, max_digits: int, sizes: tuple[int, int], seed: int
) -> None:
    """Write ``images/<split>_<i>.png`` and ``<split>.json`` (COCO + image-level ``count``)."""
    (directory / "images").mkdir(parents=True)
    pools = _digit_split(seed)
    for offset, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, offset])
        records = []
        for i in range(n):
            image, boxes, labels = render_scene(rng, *pools[split], canvas, max_digits, sizes)
            path = directory / "images" / f"{split}_{i:05d}.png"
            Image.fromarray(image).save(path, compress_level=1)
            record = ImageRecord(path, i + 1, canvas, canvas, boxes, labels, labels={"count": str(len(labels))})
            records.append(record)
        write_coco(directory / f"{split}.json", records, CATEGORIES)
        if split == "train":  # the one-dataset-per-task regime: two disjoint halves, one task each
            half = len(records) // 2
            write_coco(directory / "train_detection.json", [_only(r, "detection") for r in records[:half]], CATEGORIES)
            write_coco(directory / "train_count.json", [_only(r, "count") for r in records[half:]], CATEGORIES)


def _only(record: ImageRecord, task: str) -> ImageRecord:
    if task == "detection":
        return ImageRecord(record.path, record.image_id, record.width, record.height, record.boxes, record.box_labels)
    return ImageRecord(record.path, record.image_id, record.width, record.height, None, None, dict(record.labels))


def ensure_scenes(
    root: str | Path, counts: dict[str, int], canvas: int, max_digits: int, sizes: tuple[int, int], seed: int
) -> Path:
    """The scenes' folder, generated on first use (atomically, so concurrent runs do not clash)."""
    params = {
        "format": FORMAT,
        "counts": counts,
        "canvas": canvas,
        "max_digits": max_digits,
        "sizes": sizes,
        "seed": seed,
    }
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    final = Path(root) / f"scenes-{key}"
    if (final / "test.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".scenes-", dir=final.parent))
    try:
        generate(tmp / "data", counts, canvas, max_digits, sizes, seed)
        (tmp / "data" / "params.json").write_text(json.dumps(params, indent=2))
        try:
            os.replace(tmp / "data", final)
        except OSError:  # another process finished first; its scenes are identical
            if not (final / "test.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@DATASETS.register("digit_scenes")
def digit_scenes(
    root: str = ".cache/digit_scenes",
    canvas: int = 64,
    train_scenes: int = 4000,
    val_scenes: int = 300,
    test_scenes: int = 500,
    max_digits: int = 5,
    digit_sizes: Sequence[int] = (12, 24),
    seed: int = 0,
    regime: str = "shared",
    tasks: Sequence[str] = TASKS,
    augment: dict[str, Any] | None = None,
) -> DataBundle:
    """Digit scenes as COCO files, then the ``images`` dataset over them.

    ``regime="shared"``: every training scene labels both tasks; ``"per_task"``: half the training
    scenes label only detection, the other half only the count.
    """
    if regime not in ("shared", "per_task"):
        raise ConfigError(f"regime must be 'shared' or 'per_task', got '{regime}'")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ConfigError(f"unknown digit_scenes tasks {unknown}; valid: {', '.join(TASKS)}")
    lo, hi = (int(v) for v in digit_sizes)
    if not 4 <= lo <= hi <= canvas:
        raise ConfigError(f"digit_sizes must satisfy 4 <= min <= max <= canvas ({canvas}), got {list(digit_sizes)}")
    counts = {"train": train_scenes, "val": val_scenes, "test": test_scenes}
    folder = ensure_scenes(root, counts, canvas, max_digits, (lo, hi), seed)
    common = {"format": "coco", "val": str(folder / "val.json"), "test": str(folder / "test.json")}
    if regime == "shared":
        sources = [
            {
                "name": "scenes",
                "train": str(folder / "train.json"),
                "detection": "detection",
                "labels": ["count"],
                **common,
            }
        ]
    else:
        sources = [
            {
                "name": "scenes_detection",
                "train": str(folder / "train_detection.json"),
                "detection": "detection",
                **common,
            },
            {"name": "scenes_count", "train": str(folder / "train_count.json"), "labels": ["count"], **common},
        ]
    return images(sources, image_size=canvas, augment=augment, tasks=list(tasks))
