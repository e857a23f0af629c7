from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

from core.errors import ConfigError, DataError
from core.tasks import build_task
from tests.core.helpers import build_trainer
from tests.vision.helpers import TINY_BACKBONE, vision_config
from vision.backbone import TimmBackbone
from vision.heads import decode
from vision.heads.fcos_loss import assign, fcos_loss, level_ranges


def test_assignment_picks_the_smallest_box_and_respects_the_center_region():
    points = torch.tensor([[12.0, 12.0], [4.0, 4.0], [30.0, 30.0]])
    strides = torch.full((3,), 8.0)
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 20.0, 20.0]], [[0.0, 0.0, 32.0, 32.0], [0.0] * 4]])
    labels, matched = assign(points, strides, boxes, torch.tensor([[3, 5], [2, -1]]), center_radius=1.0)
    # (12, 12) lies in both boxes' centre regions: the smaller box wins; (4, 4) is outside both
    # centre regions (radius 8 around (16, 16) and (14, 14)); (30, 30) is outside too.
    # The second image has one real box; its padding (label -1) is never matched.
    assert labels.tolist() == [[5, -1, -1], [2, -1, -1]]
    assert matched[0, 0].tolist() == [8.0, 8.0, 20.0, 20.0]


def test_level_ranges_cover_every_size():
    lo, hi = level_ranges(torch.tensor([8.0, 8.0, 16.0, 32.0]))
    assert lo.tolist() == [0.0, 0.0, 64.0, 128.0]
    assert hi.tolist() == [64.0, 64.0, 128.0, float("inf")]


def test_decode_thresholds_nms_and_max_detections():
    points = torch.tensor([[10.0, 10.0], [11.0, 10.0], [40.0, 40.0]])
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 0, 1], logits[0, 1, 1], logits[0, 2, 0] = 5.0, 4.0, 3.0
    output = {
        "cls_logits": logits,
        "box_ltrb": torch.full((1, 3, 4), 5.0),
        "centerness": torch.full((1, 3), 10.0),
        "points": points,
        "strides": torch.full((3,), 8.0),
        "image_size": torch.tensor([64, 64]),
    }
    (det,) = decode(output, score_threshold=0.5, nms_iou=0.5, max_detections=10)
    assert det["labels"].tolist() == [1, 0]  # the overlapping lower-scored box of class 1 is suppressed
    assert det["boxes"][0].tolist() == [5.0, 5.0, 15.0, 15.0]
    (det,) = decode(output, score_threshold=0.5, nms_iou=0.5, max_detections=1)
    assert len(det["labels"]) == 1
    (det,) = decode(output, score_threshold=0.999, nms_iou=0.5, max_detections=10)
    assert len(det["labels"]) == 0


def _detection_task(num_classes: int = 3):
    backbone = TimmBackbone(**{k: v for k, v in TINY_BACKBONE.items() if k != "name"})
    task = build_task("det", {"type": "detection", "num_classes": num_classes, "channels": 16, "groups": 4}, backbone)
    return backbone, task


def test_images_without_box_labels_are_masked():
    backbone, task = _detection_task()
    out = task.head(backbone(torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)))
    targets = [None, {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}, None]
    kept, kept_targets, count = task.labelled(out, targets)
    assert count == 1 and kept["cls_logits"].shape[0] == 1 and kept_targets == [targets[1]]
    assert task.loss(out, [None, None, None]) is None
    assert torch.isfinite(task.loss(out, targets))


def test_label_out_of_range_names_the_class_count():
    backbone, task = _detection_task(num_classes=3)
    out = task.head(backbone(torch.zeros(1, 3, 64, 64)))
    with pytest.raises(DataError, match="box label 7 is out of range for num_classes=3"):
        task.loss(out, [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "labels": torch.tensor([7])}])


def test_overfits_a_handful_of_scenes(tmp_path, scenes_root):
    """Loss decreases and 150 steps reach mAP@50 near 1 on the training scenes."""
    config = vision_config(
        tmp_path,
        scenes_root,
        {"train.max_steps": 150, "train.lr": 0.01, "train.eval_every": 0, "train.warmup_steps": 10},
        train_scenes=8,
    )
    config.tasks = {"detection": config.tasks["detection"]}
    config.data["tasks"] = ["detection"]
    trainer = build_trainer(config, out_dir=None)
    first = trainer.train_step()["loss/detection"]
    trainer.step = 1
    trainer.fit()
    results = trainer.evaluate("train")["detection"]
    assert results["loss"] < 0.5 * first
    assert results["map_50"] > 0.9


def test_images_without_boxes_cost_only_the_classification_term():
    """No positive location: the box and centerness terms are empty sums (0), with no host branch."""
    backbone, task = _detection_task()
    out = task.head(backbone(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)))
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    loss = fcos_loss(out, [empty, empty])
    logits = out["cls_logits"].float()
    expected = sigmoid_focal_loss(logits, torch.zeros_like(logits), reduction="sum")
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in task.head.parameters() if p.grad is not None)


def test_select_reindexes_images_as_running_the_head_on_them_again():
    """What a bootstrap over test images rescores: the selected outputs (an image drawn twice, one
    left out) equal the head's outputs on those images, and so do the metrics."""
    backbone, task = _detection_task()
    backbone.eval(), task.head.eval()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    targets = [{"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([k % 3])} for k in range(4)]
    index = torch.tensor([2, 0, 0, 3])
    with torch.no_grad():
        out = task.head(backbone(images))
        again = task.head(backbone(images[index]))
    selected, selected_targets = task.select(out, targets, index)
    assert selected.keys() == again.keys()
    for key, value in again.items():  # per-image entries reindexed, per-level ones (strides...) kept whole
        assert torch.allclose(selected[key], value, atol=1e-5), key
    assert selected_targets == [targets[i] for i in index.tolist()]
    metrics, reference = task.new_metrics(), task.new_metrics()
    task.update_metrics(metrics, selected, selected_targets)
    task.update_metrics(reference, again, [targets[i] for i in index.tolist()])
    assert {k: float(m.compute()) for k, m in metrics.items()} == pytest.approx(
        {k: float(m.compute()) for k, m in reference.items()}
    )


def test_spec_is_the_factory_arguments_and_old_saved_specs_rebuild():
    """The spec is recorded by ``task_type``; a spec a saved model wrote by hand before (label_key filled
    with the task's name) rebuilds the same task and is written back unchanged."""
    backbone = TimmBackbone(**{k: v for k, v in TINY_BACKBONE.items() if k != "name"})
    old = {
        "type": "detection",
        "num_classes": 3,
        "label_names": ["a", "b", "c"],
        "channels": 16,
        "num_convs": 2,
        "groups": 4,
        "levels": None,
        "center_radius": 1.5,
        "score_threshold": 0.05,
        "nms_iou": 0.6,
        "max_detections": 100,
        "metrics": ["map", "map_50"],
        "label_key": "det",
        "weight": 1.0,
    }
    task = build_task("det", old, backbone)
    assert task.spec == old and task.label_key == "det" and task.label_names == ["a", "b", "c"]
    fresh = build_task("det", {"type": "detection", "num_classes": 3, "channels": 16, "groups": 4}, backbone)
    assert set(fresh.spec) == set(old) and fresh.label_key == "det"


def test_detection_needs_a_multi_scale_backbone():
    from core.backbones import MLPBackbone

    with pytest.raises(ConfigError, match="MultiScaleBackbone"):
        build_task("det", {"type": "detection", "num_classes": 3}, MLPBackbone(4))
