"""torchvision ``transforms.v2`` pipelines that keep boxes consistent with the image.

Training augmentations are limited to ones that keep every object in the picture (zoom-out,
flips, colour), so image-level labels such as "number of objects" stay true.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torchvision.transforms import v2


@dataclass
class Augment:
    hflip: float = 0.0  # probability; off by default: digits and text are not mirror-symmetric
    zoom_out: float = 1.0  # max canvas scale of RandomZoomOut (1 = off); objects shrink, none is lost
    zoom_out_p: float = 0.5
    photometric: bool = False  # brightness/contrast/saturation/hue jitter


def size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def build_transform(size: int | Sequence[int], augment: Augment | None = None) -> v2.Compose:
    """Optional augmentation, then a resize to the model's input size (boxes follow)."""
    ops: list[v2.Transform] = []
    if augment is not None:
        if augment.photometric:
            ops.append(v2.RandomPhotometricDistort(p=0.5))
        if augment.zoom_out > 1.0:
            ops.append(v2.RandomZoomOut(side_range=(1.0, augment.zoom_out), p=augment.zoom_out_p))
        if augment.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(augment.hflip))
    ops += [v2.Resize(size_hw(size), antialias=True), v2.ToDtype(torch.uint8, scale=True)]
    if augment is not None:
        ops.append(v2.SanitizeBoundingBoxes(min_size=1.0))
    return v2.Compose(ops)
