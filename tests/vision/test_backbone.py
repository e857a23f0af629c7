from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from core.backbones import BACKBONES
from core.errors import ConfigError
from tests.vision.helpers import TINY_BACKBONE
from vision.backbone import TimmBackbone


def test_features_channels_and_strides_come_from_feature_info():
    backbone = BACKBONES.build(TINY_BACKBONE)
    features = backbone(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert backbone.strides == [8, 16, 32]
    assert [f.shape[1] for f in features] == backbone.channels
    assert [f.shape[-1] for f in features] == [64 // s for s in backbone.strides]
    assert backbone.out_dim == backbone.channels[-1]


def test_normalisation_uses_the_pretrained_config():
    backbone = TimmBackbone("resnet10t", model_kwargs={"channels": [8, 8, 8, 8], "stem_width": 8})
    cfg = timm.create_model("resnet10t", pretrained=False).pretrained_cfg
    assert backbone.mean_values == pytest.approx(list(cfg["mean"]))
    assert backbone.std_values == pytest.approx(list(cfg["std"]))
    # uint8 input is scaled to [0, 1] before normalising
    x = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    backbone.eval()
    a, b = backbone(x), backbone(x.float() / 255)
    assert all(torch.allclose(u, v) for u, v in zip(a, b, strict=True))


def test_export_spec_rebuilds_without_pretrained_weights():
    backbone = BACKBONES.build(TINY_BACKBONE).eval()
    spec = backbone.export_spec()
    assert spec["pretrained"] is False
    rebuilt = BACKBONES.build(spec).eval()
    rebuilt.load_state_dict(backbone.state_dict())
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    assert all(torch.equal(u, v) for u, v in zip(backbone(x), rebuilt(x), strict=True))


def test_pretrained_weights_from_a_local_file(tmp_path):
    kwargs = {"channels": [8, 8, 8, 8], "stem_width": 8}
    source = timm.create_model("resnet10t", pretrained=False, **kwargs)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    backbone = TimmBackbone("resnet10t", pretrained_file=str(path), model_kwargs=kwargs)
    assert torch.equal(backbone.body.conv1[0].weight, source.conv1[0].weight)


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="resnet10t"):
        TimmBackbone("resnet10")


@pytest.mark.parametrize("task_type", ["classification", "binary", "multilabel", "regression"])
def test_image_level_tasks_pool_the_feature_maps_without_naming_a_head(tmp_path, task_type):
    """No ``head:`` on a timm backbone used to take ``linear`` on a list of maps: TypeError in F.linear."""
    from core.model import JointModel
    from core.tasks import build_task
    from vision.heads import PooledHead

    backbone = BACKBONES.build(TINY_BACKBONE)
    sizes = {"classification": {"num_classes": 3}, "multilabel": {"num_labels": 4}}
    task = build_task("scene", {"type": task_type, **sizes.get(task_type, {})}, backbone)
    assert isinstance(task.head, PooledHead)
    model = JointModel(backbone, [task], backbone_spec=backbone.export_spec()).eval()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert len(model.predict(images)["scene"]) == 2
    model.save_pretrained(tmp_path / "m")
    loaded = JointModel.from_pretrained(tmp_path / "m").eval()
    assert torch.equal(loaded(images)["scene"], model(images)["scene"])
