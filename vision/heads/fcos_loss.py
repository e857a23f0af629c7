"""FCOS target assignment and loss: sigmoid focal loss, GIoU box loss, centerness BCE (torchvision.ops)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

#: per-image keys of the head output (the others are shared by the batch)
PER_IMAGE = ("cls_logits", "box_ltrb", "centerness")


def level_ranges(strides: Tensor) -> tuple[Tensor, Tensor]:
    """FCOS size ranges: a level of stride s regresses max-distances in (4s, 8s]; the first and
    last levels are open-ended so every object has a level."""
    levels = sorted(set(strides.tolist()))
    lo, hi = torch.zeros_like(strides), torch.zeros_like(strides)
    for i, s in enumerate(levels):
        at = strides == s
        lo[at] = 0.0 if i == 0 else 4.0 * s
        hi[at] = math.inf if i == len(levels) - 1 else 8.0 * s
    return lo, hi


def assign(
    points: Tensor, strides: Tensor, boxes: Tensor, labels: Tensor, center_radius: float
) -> tuple[Tensor, Tensor]:
    """Per image and location: the label of its object (-1 = background) and that object's box.

    ``boxes`` (B, M, 4) and ``labels`` (B, M) are padded with label -1. A location is positive for
    a box when it lies within ``center_radius * stride`` of the box center (and inside the box)
    and the box size suits the level; ties go to the smallest box.
    """
    x, y = points[None, :, 0, None], points[None, :, 1, None]  # (1, N, 1)
    x1, y1, x2, y2 = (boxes[:, None, :, i] for i in range(4))  # (B, 1, M)
    ltrb = torch.stack([x - x1, y - y1, x2 - x, y2 - y], -1)  # (B, N, M, 4)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    radius = strides[None, :, None] * center_radius
    in_center = (
        (x > torch.maximum(cx - radius, x1))
        & (x < torch.minimum(cx + radius, x2))
        & (y > torch.maximum(cy - radius, y1))
        & (y < torch.minimum(cy + radius, y2))
    )
    lo, hi = level_ranges(strides)
    reach = ltrb.max(-1).values
    fits = (reach > lo[None, :, None]) & (reach <= hi[None, :, None])
    area = ((x2 - x1) * (y2 - y1)).expand_as(reach)
    area = torch.where(in_center & fits & (labels[:, None, :] >= 0), area, torch.full_like(area, math.inf))
    best_area, best = area.min(-1)  # (B, N)
    matched = torch.gather(labels, 1, best)
    target_labels = torch.where(torch.isfinite(best_area), matched, torch.full_like(matched, -1))
    return target_labels, torch.gather(boxes, 1, best[..., None].expand(-1, -1, 4))


def pad_targets(targets: list[dict[str, Tensor]], device: torch.device) -> tuple[Tensor, Tensor]:
    """Stack variable-length boxes/labels into (B, M, 4) / (B, M), padding with label -1."""
    m = max([1, *(len(t["labels"]) for t in targets)])
    boxes = torch.zeros(len(targets), m, 4, device=device)
    labels = torch.full((len(targets), m), -1, dtype=torch.long, device=device)
    for i, t in enumerate(targets):
        boxes[i, : len(t["labels"])] = t["boxes"].float()
        labels[i, : len(t["labels"])] = t["labels"]
    return boxes, labels


def ltrb_to_boxes(points: Tensor, ltrb: Tensor) -> Tensor:
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], -1)


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    left, top = points[:, 0] - boxes[:, 0], points[:, 1] - boxes[:, 1]
    right, bottom = boxes[:, 2] - points[:, 0], boxes[:, 3] - points[:, 1]
    lr, tb = torch.stack([left, right], -1), torch.stack([top, bottom], -1)
    ratio = (lr.min(-1).values / lr.max(-1).values) * (tb.min(-1).values / tb.max(-1).values)
    return ratio.clamp(min=0).sqrt()


def fcos_loss(
    output: dict[str, Tensor],
    targets: list[dict[str, Tensor]],
    center_radius: float = 1.5,
    focal_alpha: float = 0.25,
    focal_gamma: float = 2.0,
) -> Tensor:
    """Mean over the batch's positive locations of focal + centerness-weighted GIoU + centerness BCE."""
    points, strides = output["points"].float(), output["strides"].float()
    labels, gt_boxes = assign(points, strides, *pad_targets(targets, points.device), center_radius)  # (B, N), (B, N, 4)
    positive = labels >= 0
    num_pos = positive.sum().clamp(min=1)  # stays on the device: no host sync
    logits = output["cls_logits"].float()
    cls_target = torch.zeros_like(logits)
    cls_target[positive, labels[positive]] = 1.0
    cls_loss = sigmoid_focal_loss(logits, cls_target, focal_alpha, focal_gamma, reduction="sum") / num_pos
    # without positives the selections below are empty and their sums 0: no branch on the host
    pos_points = points[None].expand_as(gt_boxes[..., :2])[positive]
    pred_boxes = ltrb_to_boxes(pos_points, output["box_ltrb"].float()[positive])
    ctr_target = centerness_target(pos_points, gt_boxes[positive])
    giou = generalized_box_iou_loss(pred_boxes, gt_boxes[positive], reduction="none")
    box_loss = (giou * ctr_target).sum() / ctr_target.sum().clamp(min=1e-6)
    ctr_loss = (
        F.binary_cross_entropy_with_logits(output["centerness"].float()[positive], ctr_target, reduction="sum")
        / num_pos
    )
    return cls_loss + box_loss + ctr_loss
