"""The block protocol on the domain backbones: timm stages, transformer layers, tabular blocks.

Branches start as copies of the backbone's own blocks, so at initialisation a branched model
computes exactly the backbone's function at every branch point; cross-stitch with identity units
too. That checks each backbone's stem/block/finish split against its own ``forward``."""

from __future__ import annotations

import copy

import pytest
import torch

from core.architectures import ARCHITECTURES
from core.errors import ConfigError

TASKS = ["a", "b"]


def _close(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _close(x, y)
    else:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _check_copies_compute_the_backbone(backbone: torch.nn.Module, inputs, specs: list[dict]) -> None:
    backbone.eval()
    with torch.no_grad():
        expected = backbone(inputs)
    for spec in specs:
        own = copy.deepcopy(backbone)
        arch = ARCHITECTURES.build(spec, backbone=own, tasks=TASKS).eval()
        with torch.no_grad():
            out = arch.decode(arch.encode(own, inputs), TASKS)
        for t in TASKS:
            _close(out[t], expected)


def _branch_specs(depth: int) -> list[dict]:
    return [{"name": "branched", "branch_point": b} for b in range(depth + 1)]


def test_timm_stages():
    pytest.importorskip("timm")
    from vision.backbone import TimmBackbone

    torch.manual_seed(0)
    backbone = TimmBackbone("resnet18", out_indices=(1, 2, 3, 4))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert backbone.num_blocks() == 4
    _check_copies_compute_the_backbone(backbone, images, _branch_specs(4))
    # the state carries every map collected so far (nested tensors): no exact 'rep' at a branch point
    arch = ARCHITECTURES.build({"name": "branched", "branch_point": 2}, backbone=copy.deepcopy(backbone), tasks=TASKS)
    assert not arch.shared_representation
    with pytest.raises(ConfigError, match="tensor"):  # the state carries the maps collected so far
        arch = ARCHITECTURES.build({"name": "mtan"}, backbone=copy.deepcopy(backbone), tasks=TASKS)
        arch.decode(arch.encode(backbone, images), TASKS)


def test_transformer_layers():
    transformers = pytest.importorskip("transformers")
    from nlp.encoder import HFEncoder

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32
    ).to_dict()
    backbone = HFEncoder(hf_config=config)
    inputs = {
        "input_ids": torch.randint(0, 50, (2, 7)),
        "attention_mask": torch.tensor([[1] * 7, [1] * 4 + [0] * 3]),
    }
    assert backbone.num_blocks() == 3
    _check_copies_compute_the_backbone(backbone, inputs, _branch_specs(3))
    # a truncated encoder still finds its layers, and the saved spec rebuilds the full depth
    arch = ARCHITECTURES.build({"name": "branched", "branch_point": 1}, backbone=backbone, tasks=TASKS)
    assert backbone.num_blocks() == 1 and len(arch.nodes["a"]) == 2
    assert arch.shared_representation
    from core.balancing.autograd import feature_tensors

    state = arch.encode(backbone, inputs)  # what 'rep' differentiates against: the hidden states alone
    assert [t is state["hidden"] for t in feature_tensors(state)] == [True]


@pytest.mark.parametrize("encoder", ["mlp", "ft_transformer"])
def test_tabular_blocks(encoder):
    pytest.importorskip("pandas")
    from core.tabular.schema import TabularSchema
    from medical.fusion import RecordsBackbone

    from ...medical.helpers import records_frame

    frame = records_frame(40)
    schema = TabularSchema.fit(frame, ["age", "creatinine", "smoker", "site"], bins=4)
    numeric, categorical, _ = schema.encode(frame)
    inputs = {"numeric": numeric, "categorical": categorical}
    torch.manual_seed(0)
    backbone = RecordsBackbone(schema.to_json(), dim=16, tabular={"name": encoder, "depth": 2}, fusion="gated")
    _check_copies_compute_the_backbone(
        backbone, inputs, [*_branch_specs(2), {"name": "cross_stitch", "init_self": 1.0}]
    )
    for name in ("mtan", "mmoe", "ple"):  # tensor block states / vector features: every architecture runs
        own = copy.deepcopy(backbone)
        arch = ARCHITECTURES.build({"name": name}, backbone=own, tasks=TASKS)
        out = arch.decode(arch.encode(own, inputs), TASKS)
        assert all(out[t].shape == (40, 16) for t in TASKS)


def test_records_with_images_refuse_blocks():
    pytest.importorskip("timm")
    from medical.fusion import RecordsBackbone

    backbone = RecordsBackbone(modalities=["image"], dim=8, image={"model": "resnet18"}, image_channels=1)
    with pytest.raises(ConfigError, match="modalities \\[tabular\\]"):
        ARCHITECTURES.build({"name": "branched"}, backbone=backbone, tasks=TASKS)
