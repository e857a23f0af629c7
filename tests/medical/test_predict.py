import json

import pytest

from core.cli import main as jointtrain
from core.config import load_config
from core.experiments.run import train
from core.model import JointModel
from medical.thyroid import GROUPS, group_labels

from .helpers import records_frame, write_csv


def test_predict_cli_on_a_csv(tmp_path, capsys) -> None:
    csv = write_csv(records_frame(300), tmp_path / "train.csv")
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": {"name": "records", "dim": 16, "tabular": {"name": "mlp", "depth": 1}}},
        "tasks": {"renal": {"type": "disease"}, "cardiac": {"type": "disease", "threshold": "sensitivity"}},
        "data": {"name": "records", "path": str(csv), "diseases": ["renal", "cardiac"], "id_column": "patient"},
        "loading": {"batch_size": 32},
        "train": {"max_steps": 30, "eval_every": 0, "progress": False},
    }
    train(load_config(raw=raw))  # training calibrates the best model (the disease type's calibration stage)
    fitted = json.loads((tmp_path / "run" / "results.json").read_text())["calibration"]

    new = records_frame(6, seed=9).drop(columns=["renal", "cardiac"])
    new.loc[2, "smoker"] = "pipe"  # unseen category: unknown bucket, counted, warned
    out = tmp_path / "pred.json"
    with pytest.warns(UserWarning, match=r"column 'smoker': 1 value\(s\) unseen"):
        code = jointtrain(
            ["predict", str(tmp_path / "run"), str(write_csv(new, tmp_path / "new.csv")), "--out", str(out)]
        )
    assert code == 0
    rows = json.loads(out.read_text())["predictions"]
    assert [r["row"] for r in rows] == list(range(6)) and rows[0]["id"] == new["patient"][0]
    for r in rows:
        for disease in ("renal", "cardiac"):
            p = r[disease]
            assert 0 <= p["probability"] <= 1 and p["threshold"] == pytest.approx(fitted[disease]["threshold"])
            assert p["label"] == int(p["probability"] >= p["threshold"])

    model = JointModel.from_pretrained(tmp_path / "run" / "best")  # from Python: the DataFrame itself
    with pytest.warns(UserWarning, match="unseen"):
        from_frame = model.predict(new)
    assert [r["label"] for r in from_frame["cardiac"]] == [r["cardiac"]["label"] for r in rows]

    missing = write_csv(new.drop(columns=["creatinine"]), tmp_path / "missing.csv")
    assert jointtrain(["predict", str(tmp_path / "run"), str(missing), "--out", str(tmp_path / "p2.json")]) == 2
    assert "missing.csv: missing feature column(s) ['creatinine']" in capsys.readouterr().err


def test_thyroid_diagnosis_codes_become_groups() -> None:
    import pandas as pd

    labels = group_labels(pd.Series(["-", "GK", "C|I", "S", "O"]), list(GROUPS), "t.csv")
    positive = {row: [g for g in GROUPS if labels[g][row] == 1] for row in range(5)}
    assert positive == {
        0: [],
        1: ["hypothyroid", "general_health"],
        2: ["hyperthyroid", "binding_protein"],
        3: ["miscellaneous"],
        4: ["antithyroid_treatment"],
    }
    with pytest.raises(Exception, match=r"unknown diagnosis code 'Z' in column 'target' at row 1"):
        group_labels(pd.Series(["A", "Z"]), list(GROUPS), "t.csv")
