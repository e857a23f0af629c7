"""The ``detection`` task type: FCOS head + loss + decoding over a multi-scale backbone.

Detection targets are structured: per image a dict ``{"boxes": (n, 4) xyxy pixels, "labels": (n,)}``
or ``None`` where the image carries no box labels (it is then masked out of loss and metrics).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from core.backbones import MultiScaleBackbone
from core.errors import ConfigError
from core.task import Task, labelled_loss
from core.tasks import check_label_names, metric_factories, task_type

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

        def loss(output: dict[str, Tensor], target: list[dict[str, Tensor]], count: int) -> tuple[Tensor, Tensor]:
            device = output["cls_logits"].device
            return self.loss_fn(output, target).float() * count, torch.tensor(count, device=device)

        return labelled_loss(self.labelled(output, target), loss)

    def validate_target(self, target: Sequence[Target]) -> None:
        num_classes = self.spec["num_classes"]
        for t in target:
            if t is None or len(t["labels"]) == 0:
                continue
            where = f" of {t['source']}" if "source" in t else ""
            self.check_range(
                t["labels"],
                num_classes,
                "box label",
                f"num_classes={num_classes}",
                f"the data's categories{where} do not match the model's (a checkpoint trained on other categories?)",
                lowest=0,
            )

    def detections(self, output: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        s = self.spec
        return decode(output, s["score_threshold"], s["nms_iou"], s["max_detections"])

    def metric_inputs(self, output: dict[str, Tensor], target: list[dict[str, Tensor]]) -> tuple[Any, Any]:
        return self.detections(output), [{"boxes": t["boxes"].float(), "labels": t["labels"]} for t in target]

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


@task_type("detection", DetectionTask)
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
    if not isinstance(backbone, MultiScaleBackbone) or not backbone.channels or not backbone.strides:
        raise ConfigError(
            f"task '{name}': detection needs a multi-scale backbone (core.backbones.MultiScaleBackbone: "
            f"'channels' and 'strides' per stage, e.g. the 'timm' backbone), got {type(backbone).__name__}"
        )
    if num_classes < 1:
        raise ConfigError(f"task '{name}': num_classes must be >= 1, got {num_classes}")
    return DetectionTask(
        name=name,
        head=FCOSHead(backbone.channels, backbone.strides, num_classes, channels, num_convs, groups, levels=levels),
        loss_fn=functools.partial(fcos_loss, center_radius=center_radius),
        metrics=metric_factories(metrics, "detection", num_classes),
        label_key=label_key or name,
        weight=weight,
        label_names=check_label_names(label_names, num_classes, name),
    )
