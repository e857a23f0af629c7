"""COCO detection metrics (torchmetrics ``MeanAveragePrecision``, faster_coco_eval backend), one scalar each."""

from __future__ import annotations

from typing import Any

from torch import Tensor
from torchmetrics.detection import MeanAveragePrecision

from core.metrics import METRICS


class DetectionMAP(MeanAveragePrecision):
    """``MeanAveragePrecision`` reduced to one of its outputs (``map``, ``map_50``, ``map_75``, ``mar_100``...).

    core's evaluation wants one float per metric name; each of these runs its own COCO evaluation,
    which is cheap next to the forward passes.
    """

    def __init__(self, key: str = "map", **kwargs: Any) -> None:
        super().__init__(box_format="xyxy", iou_type="bbox", backend="faster_coco_eval", **kwargs)
        self.key = key

    def compute(self) -> Tensor:  # type: ignore[override]
        return super().compute()[self.key]


def _register(key: str) -> None:
    @METRICS.register(key)
    def factory(kind: str, num_classes: int | None = None) -> DetectionMAP:
        return DetectionMAP(key)

    factory.__doc__ = f"COCO {key} of a detection task."


for _key in ("map", "map_50", "map_75", "mar_100"):
    _register(_key)
