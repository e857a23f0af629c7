"""From dense FCOS outputs to final detections: score threshold, top-k, class-wise NMS, max detections."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms, clip_boxes_to_image

from .fcos_loss import ltrb_to_boxes


def decode(
    output: dict[str, Tensor],
    score_threshold: float = 0.05,
    nms_iou: float = 0.6,
    max_detections: int = 100,
    pre_nms_top_k: int = 1000,
) -> list[dict[str, Tensor]]:
    """Per image: ``{"boxes": (K, 4) xyxy, "scores": (K,), "labels": (K,)}`` in input pixels."""
    points = output["points"].float()
    size = tuple(int(v) for v in output["image_size"].tolist())
    # FCOS ranks by sqrt(class probability * centerness): well-centred locations win NMS
    scores_all = (output["cls_logits"].float().sigmoid() * output["centerness"].float().sigmoid()[..., None]).sqrt()
    results = []
    for scores, ltrb in zip(scores_all, output["box_ltrb"].float(), strict=True):
        flat = scores.flatten()
        keep = torch.nonzero(flat > score_threshold).squeeze(1)
        if len(keep) > pre_nms_top_k:
            keep = keep[flat[keep].topk(pre_nms_top_k).indices]
        location, label = keep // scores.shape[1], keep % scores.shape[1]
        boxes = clip_boxes_to_image(ltrb_to_boxes(points[location], ltrb[location]), size)
        kept = batched_nms(boxes, flat[keep], label, nms_iou)[:max_detections]
        results.append({"boxes": boxes[kept], "scores": flat[keep][kept], "labels": label[kept]})
    return results
