import warnings

import numpy as np
import pytest
import torch

from core.backbones import BACKBONES
from core.balancing import BALANCERS
from core.config import TrainConfig
from core.data import Loading
from core.engine.trainer import Trainer
from core.errors import DataError
from core.model import JointModel
from core.predict import PREDICTORS
from core.sampling import SAMPLERS
from core.tasks import build_task
from medical.data import records
from medical.fusion import FUSIONS
from medical.metrics import binary_scores, collect_logits

from .helpers import image_records

DATA = {
    "diseases": ["lesion", "metabolic"],
    "id_column": "id",
    "image_column": "image",
    "image_size": 16,
    "image_channels": 1,
    "val_fraction": 0.2,
    "test_fraction": 0.25,
}


def train(bundle, modalities: list[str], fusion: str = "gated", steps: int = 70) -> JointModel:
    torch.manual_seed(0)
    backbone = BACKBONES.build(
        {
            "name": "records",
            "modalities": modalities,
            "dim": 32,
            "fusion": fusion,
            "image": {"model_name": "test_resnet"},
            **bundle.backbone_updates,
        }
    )
    tasks = [build_task(d, {"type": "disease", **bundle.task_updates[d]}, backbone) for d in DATA["diseases"]]
    model = JointModel(backbone, tasks, extra=bundle.extra)
    config = TrainConfig(max_steps=steps, lr=3e-3, eval_every=0, progress=False)
    Trainer(model, bundle, BALANCERS.build("ew"), SAMPLERS.build("all"), config, Loading(batch_size=32)).fit()
    return model


def test_fusion_learns_a_disease_from_images_and_another_from_the_table(tmp_path) -> None:
    bundle = records(str(image_records(tmp_path, n=320)), **DATA)
    test = bundle.test[0].dataset
    with_image = np.array([p is not None for p in test.images])
    fused = collect_logits(train(bundle, ["tabular", "image"]), bundle.test, Loading())
    lesion_logits, lesion = fused["lesion"]
    assert binary_scores(lesion_logits[with_image], lesion[with_image])["auroc"] > 0.9  # only visible in the image
    assert binary_scores(*fused["metabolic"])["auroc"] > 0.9  # only in the table
    table_only = collect_logits(train(bundle, ["tabular"], steps=40), bundle.test, Loading())
    assert binary_scores(*table_only["lesion"])["auroc"] < 0.75  # the table alone cannot see lesions


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_missing_modality_uses_the_placeholder(fusion: str) -> None:
    schema = {"numeric": [{"name": "x", "median": 0.0, "lo": -3.0, "hi": 3.0, "mean": 0.0, "std": 1.0}]}
    backbone = BACKBONES.build(
        {
            "name": "records",
            "schema": schema,
            "modalities": ["tabular", "image"],
            "dim": 8,
            "fusion": fusion,
            "image": {"model_name": "test_resnet"},
            "image_channels": 1,
        }
    ).eval()
    numeric, categorical = torch.zeros(2, 1), torch.zeros(2, 0, dtype=torch.long)
    absent = torch.tensor([False, False])
    a = backbone(
        {"numeric": numeric, "categorical": categorical, "image": torch.zeros(2, 1, 16, 16), "image_present": absent}
    )
    b = backbone(
        {"numeric": numeric, "categorical": categorical, "image": torch.randn(2, 1, 16, 16), "image_present": absent}
    )
    assert a.shape == (2, backbone.out_dim) and torch.equal(a, b)  # an absent image's pixels are never used


def test_unreadable_or_missing_image_is_a_missing_modality_or_an_error(tmp_path) -> None:
    path = image_records(tmp_path, n=60)
    (tmp_path / "img1.png").write_bytes(b"not a png")
    (tmp_path / "img2.png").unlink(missing_ok=True)
    frame_text = path.read_text().replace("img2.png", "gone.png")
    path.write_text(frame_text)
    with pytest.warns(UserWarning, match=r"image file\(s\) in column 'image' do not exist \(row 2: gone.png"):
        bundle = records(str(path), **{**DATA, "val_fraction": 0.0, "test_fraction": 0.0})
    data = bundle.train[0].dataset
    row = data.rows.index(1)
    if data.images[row] is not None:  # img1 exists on disk but is not an image
        with pytest.warns(UserWarning, match="img1.png is missing or unreadable"):
            sample = data[row]
        assert not sample["inputs"]["image_present"]
    assert not data[data.rows.index(2)]["inputs"]["image_present"]
    with pytest.raises(DataError, match=r"do not exist \(row 2: gone.png"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            records(str(path), **{**DATA, "strict_images": True})


def test_saved_image_model_predicts_a_csv_as_in_training(tmp_path) -> None:
    """The predictor reads, resizes and normalises images exactly as the training data did, after a reload."""
    path = image_records(tmp_path, n=40)
    bundle = records(str(path), **{**DATA, "val_fraction": 0.0, "test_fraction": 0.0})
    backbone = BACKBONES.build(
        {"name": "records", "modalities": ["tabular", "image"], "dim": 8, "image": {"model_name": "test_resnet"},
         **bundle.backbone_updates}
    )  # fmt: skip
    tasks = [build_task(d, {"type": "disease", **bundle.task_updates[d]}, backbone) for d in DATA["diseases"]]
    JointModel(backbone, tasks, extra=bundle.extra).save_pretrained(tmp_path / "m")
    model = JointModel.from_pretrained(tmp_path / "m").eval()
    predicted = PREDICTORS.get("records")(model, path)
    data = bundle.train[0].dataset
    samples = [data[data.rows.index(r)]["inputs"] for r in range(len(predicted))]
    assert [p["image_used"] for p in predicted] == [bool(s["image_present"]) for s in samples]
    assert samples[0]["image"].dtype == torch.uint8
    batch = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    expected = model.predict(batch)["lesion"]
    assert [p["lesion"]["probability"] for p in predicted] == pytest.approx([e["probability"] for e in expected])


def test_image_model_is_model_name_as_in_vision_and_model_is_deprecated() -> None:
    from medical.imaging import image_model_spec

    assert image_model_spec({"model_name": "resnet18", "pretrained": False}) == {
        "model_name": "resnet18", "pretrained": False
    }  # fmt: skip
    with pytest.warns(FutureWarning, match=r"image 'model' is deprecated; write 'model_name'"):
        assert image_model_spec({"model": "resnet18"}) == {"model_name": "resnet18"}
    with pytest.raises(Exception, match="give 'model_name' only"):
        image_model_spec({"model": "a", "model_name": "b"})
