"""docs/tabular.md's config example trains as written, on a table with the columns it names."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from core.config import load_config
from core.experiments.run import train

DOC = Path(__file__).resolve().parents[3] / "docs" / "tabular.md"


def patients(n: int = 200) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    age = rng.uniform(20, 80, n)
    creatinine = rng.lognormal(0, 0.4, n).round(2).astype(object)
    creatinine[[5, 17]] = "hemolysed"  # stray words: read as missing because of 'coerce'
    return pd.DataFrame(
        {
            "patient_id": np.arange(n) // 2,
            "age": age.round(1),
            "creatinine": creatinine,
            "site": rng.choice(["north", "south"], n),
            "species": rng.choice(["a", "b", "c", None], n),
            "grade": np.where(age > 60, "high", np.where(age > 40, "mid", "low")),
            "smoker": rng.choice(["current", "never", None], n),
            "asthma": rng.choice([1, 0, None], n),
            "copd": (age > 50).astype(int),
            "bmi": (18 + age / 5 + rng.normal(0, 1, n)).round(1),
        }
    )


def test_own_table_example_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.set_num_threads(1)
    body = DOC.read_text().split("## Your own table", 1)[1]
    raw = yaml.safe_load(re.search(r"```yaml\n(.*?)```", body, re.S).group(1))
    monkeypatch.chdir(tmp_path)
    patients().to_csv("patients.csv", index=False)  # the example's relative path, from the working directory
    overrides = ["output_dir=run", "train.max_steps=20", "train.eval_every=0", "train.progress=false"]
    with pytest.warns(UserWarning, match=r"numeric column 'creatinine': 2 non-numeric value\(s\) read as missing"):
        report = train(load_config(raw=raw, overrides=[*overrides, "report.enabled=false"]))
    assert set(report["tasks"]) == {"species", "grade", "smoker", "tags", "bmi"}
