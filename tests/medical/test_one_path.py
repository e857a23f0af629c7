"""One medical path: ``jointtrain train`` with disease tasks calibrates and applies the threshold
rules (the disease type's calibration stage), and ``scripts/train_medical.py`` is a thin wrapper
over it that reports the user's data, extra non-disease labels included."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from core.cli import main as jointtrain
from core.config import load_config
from core.evaluation import evaluate
from core.experiments.builder import Experiment
from core.model import JointModel
from medical.calibrators import fit_disease
from medical.metrics import binary_scores, collect_logits

from .helpers import records_frame, write_csv

ROOT = Path(__file__).resolve().parents[2]


def write_config(tmp_path: Path, frame: pd.DataFrame, tasks: dict, data: dict | None = None) -> Path:
    csv = write_csv(frame, tmp_path / "patients.csv")
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": {"name": "records", "dim": 16, "tabular": {"name": "mlp", "depth": 1}}},
        "tasks": tasks,
        "data": {"name": "records", "path": str(csv), "diseases": ["renal", "cardiac"], "id_column": "patient"}
        | (data or {}),
        "loading": {"batch_size": 32},
        "train": {"max_steps": 40, "eval_every": 20, "lr": 0.01, "progress": False},
        "report": {"enabled": False, "affinity_batches": 0, "train_eval_samples": 0},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_train_command_calibrates_and_predict_applies_the_thresholds(tmp_path) -> None:
    tasks = {
        "renal": {"type": "disease", "threshold": "sensitivity", "target_sensitivity": 0.9},
        "cardiac": {"type": "disease", "calibration": "temperature"},
    }
    path = write_config(tmp_path, records_frame(400), tasks)
    assert jointtrain(["train", str(path)]) == 0

    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    fitted = results["calibration"]
    assert set(fitted) == {"renal", "cardiac"}
    model = JointModel.from_pretrained(run / "best")
    for name in ("renal", "cardiac"):  # the saved model carries what was fitted
        head = model.tasks[name].head
        assert float(head.scale) == pytest.approx(fitted[name]["scale"])
        assert float(head.bias) == pytest.approx(fitted[name]["bias"])
        assert float(head.threshold) == pytest.approx(fitted[name]["threshold"])
    assert fitted["cardiac"]["bias"] == 0.0 and fitted["cardiac"]["method"] == "temperature"

    # exactly the rule the config asked for, on the validation split's raw logits
    config = load_config(path)
    data = Experiment(config).data
    logits, labels = collect_logits(model, data.val, config.loading)["renal"]
    expected = fit_disease(logits, labels, "platt", "sensitivity", 0.9)
    assert fitted["renal"]["threshold"] == pytest.approx(expected["threshold"], abs=1e-6)
    assert fitted["renal"]["threshold"] != 0.5
    keep = ~np.isnan(labels)
    probs = model.tasks["renal"].head.probability(torch.as_tensor(logits)).numpy()[keep]
    assert (probs[labels[keep] == 1] >= fitted["renal"]["threshold"]).mean() >= 0.9

    # the test results are the calibrated model's
    tested = evaluate(model, data.test, config.loading)
    assert results["models"]["best"]["test"]["renal"]["ece"] == pytest.approx(tested["renal"]["ece"], abs=1e-6)
    assert fitted["renal"]["val_ece_after"] <= fitted["renal"]["val_ece_before"]

    new = records_frame(40, seed=9).drop(columns=["renal", "cardiac"])
    out = tmp_path / "pred.json"
    assert jointtrain(["predict", str(run), str(write_csv(new, tmp_path / "new.csv")), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["predictions"]
    for name in ("renal", "cardiac"):
        assert [r[name]["threshold"] for r in rows] == pytest.approx([fitted[name]["threshold"]] * len(rows))
        assert all(r[name]["label"] == int(r[name]["probability"] >= fitted[name]["threshold"]) for r in rows)


def _script():
    spec = importlib.util.spec_from_file_location("train_medical", ROOT / "scripts" / "train_medical.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_with_extra_labels_trains_calibrates_and_reports_the_users_data(tmp_path, capsys) -> None:
    frame = records_frame(400)
    rng = np.random.default_rng(1)
    frame["stage"] = np.where(frame["age"] > 60, "late", np.where(frame["age"] > 40, "mid", "early"))
    lab = frame["age"] * 0.1 + rng.normal(size=len(frame))
    frame["lab"] = lab.where(rng.random(len(frame)) > 0.3).round(2)  # a regression label, 30 % unknown
    tasks = {"renal": {"type": "disease"}, "cardiac": {"type": "disease"}, "stage": {}, "lab": {}}
    labels = {"stage": "classification", "lab": "regression"}
    path = write_config(tmp_path, frame, tasks, {"labels": labels, "features": ["age", "creatinine", "smoker"]})

    assert _script().main(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 calibrated disease heads (renal, cardiac)" in out and "7 calibrated" not in out
    assert "MISSED" not in out and "bar:" not in out  # the thyroid demo's targets are the demo's
    assert "stage" in out and "lab" in out  # the other tasks' test metrics are reported too

    run = tmp_path / "run"
    report = json.loads((run / "medical_report.json").read_text())
    assert set(report["test"]["joint"]) == {"renal", "cardiac", "macro"}
    assert set(report["test"]["hgb"]) == {"renal", "cardiac", "macro"}
    assert set(report["other_tasks"]) == {"stage", "lab"}
    assert set(report["calibration"]) == {"renal", "cardiac"}
    # the script reports the model that training calibrated and saved, and leaves it as it is
    model = JointModel.from_pretrained(run / "best")
    assert float(model.tasks["renal"].head.threshold) == pytest.approx(report["calibration"]["renal"]["threshold"])
    config = load_config(path)
    logits, labels = collect_logits(model, Experiment(config).data.test, config.loading)["cardiac"]
    probs = model.tasks["cardiac"].head.probability(torch.as_tensor(logits)).numpy()
    assert report["test"]["joint"]["cardiac"]["ece"] == pytest.approx(binary_scores(probs, labels)["ece"])
