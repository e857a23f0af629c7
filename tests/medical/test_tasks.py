import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.backbones import BACKBONES
from core.balancing import BALANCERS
from core.config import TrainConfig
from core.data import Loading
from core.engine.trainer import Trainer
from core.errors import DataError
from core.model import JointModel
from core.sampling import SAMPLERS
from core.tabular import TablePreparation
from core.tasks import build_task
from medical.data import records, records_bundle

from .helpers import records_frame, write_csv


def model_for(bundle, tasks=("renal", "cardiac"), **task_spec) -> JointModel:
    backbone = BACKBONES.build({"name": "records", "dim": 16, **bundle.backbone_updates})
    built = [build_task(t, {"type": "disease", **task_spec, **bundle.task_updates.get(t, {})}, backbone) for t in tasks]
    return JointModel(backbone, built, extra=bundle.extra)


def test_unknown_labels_never_reach_the_loss() -> None:
    bundle = records_bundle(records_frame(200), ["renal", "cardiac"], preparation=TablePreparation(id_column="patient"))
    task = model_for(bundle).tasks["renal"]
    target = torch.tensor([1.0, float("nan"), 0.0, float("nan")])
    logits = torch.tensor([[0.3], [float("nan")], [-0.2], [1e30]], requires_grad=True)
    loss = task.loss(logits, target)
    expected = F.binary_cross_entropy_with_logits(
        torch.tensor([0.3, -0.2]), torch.tensor([1.0, 0.0]), pos_weight=torch.tensor(task.spec["pos_weight"])
    )
    assert torch.isfinite(loss) and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logits.grad[[1, 3]].abs().sum() == 0
    assert task.loss(logits, torch.full((4,), float("nan"))) is None


def test_metrics_ignore_unknown_labels() -> None:
    bundle = records_bundle(records_frame(200), ["renal", "cardiac"], preparation=TablePreparation(id_column="patient"))
    task = model_for(bundle).tasks["renal"]
    logits = torch.tensor([[2.0], [-1.0], [0.5], [3.0], [-2.0]])
    target = torch.tensor([1.0, 0.0, float("nan"), 0.0, float("nan")])
    with_unknown, labelled_only = task.new_metrics(), task.new_metrics()
    task.update_metrics(with_unknown, logits, target)
    task.update_metrics(labelled_only, logits[[0, 1, 3]], target[[0, 1, 3]])
    for name in with_unknown:
        assert float(with_unknown[name].compute()) == pytest.approx(float(labelled_only[name].compute()))


def test_pos_weight_is_computed_from_training_labels_only() -> None:
    frame = records_frame(300)
    bundle = records_bundle(frame, ["renal", "cardiac"], preparation=TablePreparation(id_column="patient", seed=3))
    train = bundle.train[0].dataset.labels["cardiac"].numpy()
    seen = train[~np.isnan(train)]
    counts = bundle.task_updates["cardiac"]["label_counts"]
    assert counts == {"positive": int(seen.sum()), "negative": int(len(seen) - seen.sum())}
    task = model_for(bundle).tasks["cardiac"]
    assert task.spec["pos_weight"] == pytest.approx((len(seen) - seen.sum()) / seen.sum())
    assert counts["positive"] + counts["negative"] < (~frame["cardiac"].isna()).sum()  # val/test not counted


def test_patient_level_split_keeps_a_patients_rows_together() -> None:
    frame = records_frame(300)
    frame["patient"] = [f"p{i // 3}" for i in range(300)]  # three visits per patient
    bundle = records_bundle(frame, ["renal"], preparation=TablePreparation(id_column="patient", seed=1))
    parts = [set(frame["patient"].iloc[s.dataset.rows]) for s in (*bundle.train, *bundle.val, *bundle.test)]
    assert sum(len(p) for p in parts) == 100 and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])


def test_bad_label_value_names_column_row_and_file(tmp_path) -> None:
    frame = records_frame(50).astype({"renal": object})
    frame.loc[7, "renal"] = "maybe"
    path = write_csv(frame, tmp_path / "bad.csv")
    message = r"bad.csv: label column 'renal' has the value 'maybe' at row 9 \(header = row 1\)"
    with pytest.raises(DataError, match=message):
        records(str(path), ["renal"])


def test_disease_without_training_positive_is_refused(tmp_path) -> None:
    path = write_csv(records_frame(80).assign(rare=0), tmp_path / "r.csv")
    with pytest.raises(DataError, match=r"r.csv: disease column 'rare' has no positive label in the training split"):
        records(str(path), ["renal", "rare"])


def test_cohorts_labelled_for_different_diseases_train_jointly() -> None:
    frame = records_frame(400)
    frame["cohort"] = np.where(np.arange(400) % 2 == 0, "renal_study", "cardiac_study")
    frame.loc[frame.cohort == "renal_study", "cardiac"] = None  # each cohort labels one disease
    frame.loc[frame.cohort == "cardiac_study", "renal"] = None
    bundle = records_bundle(
        frame, ["renal", "cardiac"], cohort_column="cohort", preparation=TablePreparation(id_column="patient")
    )
    assert {s.name: s.tasks for s in bundle.train} == {"cardiac_study": ["cardiac"], "renal_study": ["renal"]}
    model = model_for(bundle)
    trainer = Trainer(
        model,
        bundle,
        BALANCERS.build("ew"),
        SAMPLERS.build("round_robin"),
        TrainConfig(max_steps=4, eval_every=0, progress=False),
        Loading(batch_size=32),
    )
    trainer.fit()
    results = trainer.evaluate("val")
    assert set(results) == {"renal", "cardiac"} and all(math.isfinite(r["auroc"]) for r in results.values())


def test_records_take_other_task_types_beside_diseases() -> None:
    """A patient table may also label a category and a measurement: core's task types read them."""
    frame = records_frame(300)
    frame["stage"] = np.where(frame["age"] > 60, "late", "early").astype(object)
    frame["egfr"] = 120 - frame["age"] + np.random.default_rng(0).normal(0, 2, 300)
    frame.loc[::4, "stage"] = None
    labels = {"stage": "classification", "egfr": "regression"}
    bundle = records_bundle(frame, ["renal"], labels=labels, preparation=TablePreparation(id_column="patient"))
    assert {t: bundle.task_updates[t]["type"] for t in ("renal", "stage", "egfr")} == {
        "renal": "disease", "stage": "classification", "egfr": "regression"
    }  # fmt: skip
    assert bundle.task_updates["stage"]["label_names"] == ["early", "late"]
    backbone = BACKBONES.build({"name": "records", "dim": 16, **bundle.backbone_updates})
    model = JointModel(backbone, [build_task(t, bundle.task_updates[t], backbone) for t in ("renal", "stage", "egfr")])
    trainer = Trainer(
        model,
        bundle,
        BALANCERS.build("ew"),
        SAMPLERS.build("all"),
        TrainConfig(max_steps=60, lr=3e-3, eval_every=0, progress=False),
        Loading(batch_size=32),
    )
    trainer.fit()
    results = trainer.evaluate("test")
    assert results["stage"]["accuracy"] > 0.8 and results["egfr"]["pearson"] > 0.8
    with pytest.raises(Exception, match=r"tasks \['renal'\] are listed both as diseases and under labels"):
        records_bundle(frame, ["renal"], labels={"renal": "binary"})


def test_yes_no_disease_labels_name_the_predicted_label() -> None:
    frame = records_frame(200)
    frame["renal"] = frame["renal"].map({1.0: "Yes", 0.0: "No"})
    bundle = records_bundle(frame, ["renal"], preparation=TablePreparation(id_column="patient"))
    assert bundle.task_updates["renal"]["label_names"] == ["no", "yes"]
    model = model_for(bundle, tasks=("renal",))
    data = bundle.test[0].dataset
    out = model.predict({"numeric": data.numeric[:3], "categorical": data.categorical[:3]})["renal"]
    assert all(set(r) == {"label", "probability", "threshold"} for r in out)
    assert [r["label"] for r in out] == ["yes" if r["probability"] >= 0.5 else "no" for r in out]
