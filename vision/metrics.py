"""COCO detection metrics (torchmetrics ``MeanAveragePrecision``, faster_coco_eval backend), one scalar each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.distributed as dist
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

    def _sync_dist(self, dist_sync_fn: Callable | None = None, process_group: Any | None = None) -> None:
        """Gather every rank's per-image lists in ONE ``all_gather_object``.

        torchmetrics gathers a list state element by element, i.e. one collective per image, so
        ranks holding different image counts (300 scenes on 8 ranks: 38 vs 37) wait on each other
        forever. Each rank then computes the same COCO evaluation over all images.
        """
        group = process_group or self.process_group
        local = {attr: [t.cpu() for t in getattr(self, attr)] for attr in self._reductions}
        gathered: list[dict[str, list[Tensor]] | None] = [None] * dist.get_world_size(group)
        dist.all_gather_object(gathered, local, group=group)
        for attr in self._reductions:
            setattr(self, attr, [t.to(self.device) for part in gathered for t in part[attr]])  # type: ignore[index]

    def compute(self) -> Tensor:  # type: ignore[override]
        return super().compute()[self.key]


def _register(key: str) -> None:
    @METRICS.register(key)
    def factory(kind: str, num_classes: int | None = None) -> DetectionMAP:
        return DetectionMAP(key)

    factory.__doc__ = f"COCO {key} of a detection task."


for _key in ("map", "map_50", "map_75", "mar_100"):
    _register(_key)
