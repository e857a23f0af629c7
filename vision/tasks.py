"""The ``detection`` task type: FCOS head + loss + decoding over a multi-scale backbone.

Detection targets are structured: per image a dict ``{"boxes": (n, 4) xyxy pixels, "labels": (n,)}``
or ``None`` where the image carries no box labels (it is then masked out of loss and metrics).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from core.distributed import connected_zero
from core.errors import ConfigError, DataError
from core.metrics import METRICS
from core.task import Task
from core.tasks import TASKS

from .heads import FCOSHead, decode, fcos_loss
from .heads.fcos_loss import PER_IMAGE

Target = dict[str, Tensor] | None


class DetectionTask(Task):
    """Task with a list of per-image box targets; overrides masking, metrics and postprocessing."""

    def labelled(self, output: dict[str, Tensor], target: Sequence[Target]) -> tuple[Any, Any, int]:
        keep = [i for i, t in enumerate(target) if t is not None]
        if len(keep) == len(target):
            return output, list(target), len(keep)
        subset = {k: (v[keep] if k in PER_IMAGE else v) for k, v in output.items()}
        return subset, [target[i] for i in keep], len(keep)

    def count_labelled(self, target: Sequence[Target]) -> int:
        return sum(t is not None for t in target)

    def select(self, output: dict[str, Tensor], target: Sequence[Target], index: Tensor) -> tuple[Any, Any]:
        rows = index.tolist()
        return {k: (v[index] if k in PER_IMAGE else v) for k, v in output.items()}, [target[i] for i in rows]

    def masked_loss(self, output: dict[str, Tensor], target: Sequence[Target]) -> tuple[Tensor, Tensor]:
        """Which images carry boxes is a host-side list: the count needs no device read."""
        output, target, count = self.labelled(output, target)
        if count == 0:  # a zero whose graph reaches the outputs, so every rank runs the same backward
            return connected_zero(output), torch.zeros((), device=output["cls_logits"].device)
        return self.loss_fn(output, target).float() * count, torch.tensor(count, device=output["cls_logits"].device)

    def validate_target(self, target: Sequence[Target]) -> None:
        num_classes = self.spec["num_classes"]
        for t in target:
            if t is None or len(t["labels"]) == 0:
                continue
            bad = (t["labels"] < 0) | (t["labels"] >= num_classes)
            if bool(bad.any()):
                where = f" in {t['source']}" if "source" in t else ""
                raise DataError(
                    f"task '{self.name}': box label {int(t['labels'][bad][0])}{where} is out of range for "
                    f"num_classes={num_classes} (label key '{self.label_key}'); the data's categories "
                    "do not match the model's (a checkpoint trained on other categories?)"
                )

    def detections(self, output: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        s = self.spec
        return decode(output, s["score_threshold"], s["nms_iou"], s["max_detections"])

    def update_metrics(self, metrics: Mapping[str, Metric], output: Any, target: Any) -> None:
        output, target, count = self.labelled(output, target)
        if count:
            preds = self.detections(output)
            gts = [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in target]
            for metric in metrics.values():
                metric.update(preds, gts)

    def postprocess(self, output: dict[str, Tensor]) -> list[Any]:
        names = self.label_names
        return [
            [
                {
                    "box": [round(v, 2) for v in box],
                    "score": round(score, 4),
                    "label": names[label] if names else label,
                    "index": label,
                }
                for box, score, label in zip(
                    d["boxes"].tolist(), d["scores"].tolist(), d["labels"].tolist(), strict=True
                )
            ]
            for d in self.detections(output)
        ]


@TASKS.register("detection")
def detection(
    name: str,
    backbone: nn.Module,
    num_classes: int,
    label_names: Sequence[str] | None = None,
    channels: int = 64,
    num_convs: int = 2,
    groups: int = 8,
    levels: Sequence[int] | None = None,
    center_radius: float = 1.5,
    score_threshold: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    metrics: Sequence[str] = ("map", "map_50"),
    label_key: str | None = None,
    weight: float = 1.0,
) -> Task:
    """Anchor-free object detection (FCOS-style) on every stage the backbone returns.

    ``channels``/``num_convs``/``groups`` size the FPN and the GroupNorm towers; ``levels`` picks the
    stages that predict (default all); ``center_radius``
    (in strides) sets which locations learn an object; ``score_threshold``, ``nms_iou`` and
    ``max_detections`` shape the decoded detections.
    """
    in_channels, strides = getattr(backbone, "channels", None), getattr(backbone, "strides", None)
    if not in_channels or not strides:
        raise ConfigError(
            f"task '{name}': detection needs a multi-scale backbone exposing 'channels' and 'strides' "
            f"(e.g. the 'timm' backbone), got {type(backbone).__name__}"
        )
    if num_classes < 1:
        raise ConfigError(f"task '{name}': num_classes must be >= 1, got {num_classes}")
    if label_names is not None and len(label_names) != num_classes:
        raise ConfigError(f"task '{name}': {len(label_names)} label_names given for {num_classes} classes")
    spec = {
        "type": "detection",
        "num_classes": num_classes,
        "label_names": list(label_names) if label_names is not None else None,
        "channels": channels,
        "num_convs": num_convs,
        "groups": groups,
        "levels": list(levels) if levels is not None else None,
        "center_radius": center_radius,
        "score_threshold": score_threshold,
        "nms_iou": nms_iou,
        "max_detections": max_detections,
        "metrics": list(metrics),
        "label_key": label_key or name,
        "weight": weight,
    }
    return DetectionTask(
        name=name,
        head=FCOSHead(in_channels, strides, num_classes, channels, num_convs, groups, levels=levels),
        loss_fn=functools.partial(fcos_loss, center_radius=center_radius),
        metrics={m: functools.partial(METRICS.get(m), "detection", num_classes) for m in metrics},
        label_key=label_key or name,
        weight=weight,
        label_names=spec["label_names"],
        spec=spec,
    )
