import numpy as np
import pytest
import torch

from core.backbones import BACKBONES
from core.model import JointModel
from core.tabular import TablePreparation
from core.tasks import build_task
from medical.calibration import calibrate
from medical.calibrators import CALIBRATORS, fit_disease, sensitivity, youden
from medical.data import records_bundle
from medical.metrics import binary_scores

from .helpers import records_frame


def miscalibrated(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True risk logits z, labels ~ Bernoulli(sigmoid(z)), and an over-confident, shifted model 3z + 2."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.5, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.float64)
    return z, y, 3 * z + 2


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_calibration_lowers_ece_on_a_miscalibrated_toy(method: str) -> None:
    _, y, logits = miscalibrated()
    a, b = CALIBRATORS.get(method)(logits[:2000], y[:2000])
    before = binary_scores(1 / (1 + np.exp(-logits[2000:])), y[2000:])["ece"]
    after = binary_scores(1 / (1 + np.exp(-(a * logits[2000:] + b))), y[2000:])["ece"]
    assert before > 0.1 and after < before
    if method == "platt":  # recovers the true map z = (logits - 2) / 3
        assert a == pytest.approx(1 / 3, abs=0.05) and b == pytest.approx(-2 / 3, abs=0.15)
        assert after < 0.03


def test_thresholds() -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 1])
    assert youden(probs, labels) == pytest.approx(0.3)  # TPR 1, FPR 1/3: J = 2/3, the best
    assert sensitivity(probs, labels, 0.6) == pytest.approx(0.7)  # 3 of 5 positives, no false alarm
    assert sensitivity(probs, labels, 1.0) == pytest.approx(0.3)


def test_fit_disease_refuses_a_single_class_validation_split() -> None:
    with pytest.raises(Exception, match="0 positive"):
        fit_disease(np.zeros(5), np.zeros(5), "platt", "youden", 0.9)


def test_calibrate_writes_buffers_that_survive_save_and_predict(tmp_path) -> None:
    bundle = records_bundle(records_frame(300), ["renal", "cardiac"], preparation=TablePreparation(id_column="patient"))
    backbone = BACKBONES.build({"name": "records", "dim": 8, **bundle.backbone_updates})
    tasks = [build_task(t, {"type": "disease", **bundle.task_updates[t]}, backbone) for t in ("renal", "cardiac")]
    model = JointModel(backbone, tasks, extra=bundle.extra)
    report = calibrate(model, bundle.val)
    assert set(report) == {"renal", "cardiac"}
    head = model.tasks["renal"].head
    assert float(head.scale) == pytest.approx(report["renal"]["scale"])
    assert float(head.threshold) == pytest.approx(report["renal"]["threshold"])
    model.save_pretrained(tmp_path / "m")
    loaded = JointModel.from_pretrained(tmp_path / "m")
    batch = {
        k: v[:4]
        for k, v in {
            "numeric": bundle.test[0].dataset.numeric,
            "categorical": bundle.test[0].dataset.categorical,
        }.items()
    }
    out = loaded.predict(batch)["renal"]
    logits = model.eval()(batch)["renal"].squeeze(-1)
    expected = torch.sigmoid(report["renal"]["scale"] * logits + report["renal"]["bias"])
    assert [r["probability"] for r in out] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [r["label"] for r in out] == [int(p >= report["renal"]["threshold"]) for p in expected.tolist()]
