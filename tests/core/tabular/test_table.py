"""The ``table`` dataset end to end: a CSV with every core label kind trains from a config dict
with no Python glue, and ``jointtrain predict`` reads new rows through the saved schema."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.backbones import BACKBONES
from core.cli import main as jointtrain
from core.config import load_config
from core.errors import ConfigError, DataError
from core.experiments.run import train
from core.model import JointModel
from core.tabular import TablePreparation, read_table, table_bundle
from core.tabular.dataset import table
from core.tasks import build_task

from .helpers import LABELS, issue_frame


def config(path: str, out: Path, steps: int = 150, **data: object) -> dict:
    return {
        "output_dir": str(out),
        "model": {"backbone": {"name": "tabular", "dim": 32}},
        "tasks": {"species": {}, "flag": {}, "target": {}},
        "data": {"name": "table", "path": path, "labels": LABELS, **data},
        "loading": {"batch_size": 32},
        "train": {"max_steps": steps, "eval_every": 0, "progress": False},
        "report": {"enabled": False},
    }


def test_issue_csv_trains_from_a_config_and_predicts_a_csv(tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    issue_frame().to_csv(tmp_path / "train.csv", index=False)
    report = train(load_config(raw=config(str(tmp_path / "train.csv"), tmp_path / "run")))
    scores = report["tasks"]
    assert scores["species"]["accuracy"] > 0.75 and scores["flag"]["auroc"] > 0.9
    assert scores["target"]["pearson"] > 0.9 and scores["target"]["mae"] < 1.5  # on the raw scale

    new = issue_frame(40, seed=5)
    truth = 3 * new["x4"] - 2 * new["x5"] + 10
    new.loc[3, "color"] = "purple"  # unseen category: the unknown bucket, warned
    new.drop(columns=list(LABELS)).to_csv(tmp_path / "new.csv", index=False)
    out = tmp_path / "pred.json"
    with pytest.warns(UserWarning, match=r"column 'color': 1 value\(s\) unseen"):
        assert jointtrain(["predict", str(tmp_path / "run"), str(tmp_path / "new.csv"), "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["predictions"]
    assert [r["row"] for r in rows] == list(range(40))
    for r in rows:
        species, flag, target = r["species"], r["flag"], r["target"]
        assert set(species) == {"label", "index", "probabilities"} and species["label"] in ("alpha", "beta", "gamma")
        assert ["alpha", "beta", "gamma"][species["index"]] == species["label"]
        assert math.isclose(sum(species["probabilities"]), 1, rel_tol=1e-5)
        assert set(flag) == {"label", "probability"} and flag["label"] == int(flag["probability"] >= 0.5)
        assert set(target) == {"value"}
    values = np.array([r["target"]["value"] for r in rows])
    assert np.abs(values - truth.to_numpy()).mean() < 1.5

    new.drop(columns=["x3", *LABELS]).to_csv(tmp_path / "short.csv", index=False)
    assert (
        jointtrain(["predict", str(tmp_path / "run"), str(tmp_path / "short.csv"), "--out", str(tmp_path / "p2.json")])
        == 2
    )
    assert "short.csv: missing feature column(s) ['x3']" in capsys.readouterr().err


def test_parquet_and_json_lines_read_like_csv(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    frame = issue_frame(60)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.to_parquet(tmp_path / "t.parquet")
    frame.to_json(tmp_path / "t.jsonl", orient="records", lines=True)
    bundles = [table_bundle(read_table(tmp_path / f"t.{ext}"), LABELS) for ext in ("csv", "parquet", "jsonl")]
    reference = bundles[0].train[0].dataset
    for bundle in bundles[1:]:
        data = bundle.train[0].dataset
        assert torch.allclose(data.numeric, reference.numeric, equal_nan=True)
        assert torch.equal(data.categorical, reference.categorical)
        for task in LABELS:
            assert torch.allclose(data.labels[task].double(), reference.labels[task].double(), equal_nan=True)
    with pytest.raises(DataError, match=r"t.xlsx: unknown table format"):
        (tmp_path / "t.xlsx").write_text("x")
        read_table(tmp_path / "t.xlsx")


def test_training_statistics_come_from_the_training_split_only() -> None:
    frame = issue_frame(300)
    bundle = table_bundle(frame, LABELS, preparation=TablePreparation(seed=2))
    rows = bundle.train[0].dataset.rows
    train_target = frame["target"].iloc[rows].dropna()
    updates = bundle.task_updates["target"]
    assert updates["type"] == "regression"
    assert updates["target_mean"] == pytest.approx(train_target.mean(), rel=1e-5)
    assert updates["target_std"] == pytest.approx(train_target.std(ddof=0), rel=1e-4)
    assert bundle.task_sizes == {t: int(frame[t].iloc[rows].notna().sum()) for t in LABELS}
    assert bundle.train[0].dataset.labelled_counts() == bundle.task_sizes
    median = bundle.backbone_updates["schema"]["numeric"][6]
    assert median["name"] == "x6" and median["median"] == pytest.approx(frame["x6"].iloc[rows].median())


def test_split_column_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frame = issue_frame(90)
    frame["part"] = ["train"] * 60 + ["Validation"] * 15 + ["test"] * 15
    frame.to_csv(tmp_path / "t.csv", index=False)
    monkeypatch.chdir(tmp_path)
    bundle = table("t.csv", LABELS, split_column="part")  # relative to the working directory
    assert [len(s) for s in (*bundle.train, *bundle.val, *bundle.test)] == [60, 15, 15]
    with pytest.raises(ConfigError, match="give split_column or val_fraction / test_fraction, not both"):
        table("t.csv", LABELS, split_column="part", val_fraction=0.2)
    assert "part" not in bundle.backbone_updates["schema"]["categorical"]
    frame.loc[70, "part"] = "holdout"
    with pytest.raises(DataError, match=r"split column 'part' has the value 'holdout' at index 70"):
        table_bundle(frame, LABELS, preparation=TablePreparation(split_column="part"))


def test_a_task_without_training_labels_is_refused() -> None:
    frame = issue_frame(80).assign(target=np.nan)
    with pytest.raises(DataError, match=r"task 'target' .* has no label in the training split"):
        table_bundle(frame, LABELS)
    with pytest.raises(ConfigError, match=r"columns \['flag'\] are labels"):
        table_bundle(issue_frame(80), LABELS, preparation=TablePreparation(features=["x0", "flag"]))


def test_one_prediction_schema_per_task_type_survives_save_and_load(tmp_path: Path) -> None:
    frame = issue_frame(120)
    frame["tag_a"], frame["tag_b"] = (frame["x8"] > 0).astype(float), (frame["x9"] > 0).astype(float)
    labels = {**LABELS, "tags": {"type": "multilabel", "columns": ["tag_a", "tag_b"]}}
    bundle = table_bundle(frame, labels)
    backbone = BACKBONES.build({"name": "tabular", "dim": 8, **bundle.backbone_updates})
    tasks = [build_task(t, bundle.task_updates[t], backbone) for t in labels]
    JointModel(backbone, tasks, extra=bundle.extra).save_pretrained(tmp_path / "m")
    model = JointModel.from_pretrained(tmp_path / "m")
    assert {t: model.tasks[t].spec for t in labels} == {t: task.spec for t, task in zip(labels, tasks, strict=True)}
    sample = bundle.train[0].dataset[0]["inputs"]
    out = model.predict({k: v[None] for k, v in sample.items()})
    json.dumps(out)
    assert set(out["species"][0]) == {"label", "index", "probabilities"}
    assert set(out["flag"][0]) == {"label", "probability"}
    assert set(out["tags"][0]) == {"labels", "probabilities"} and len(out["tags"][0]["probabilities"]) == 2
    assert set(out["tags"][0]["labels"]) <= {"tag_a", "tag_b"}
    assert set(out["target"][0]) == {"value"} and isinstance(out["target"][0]["value"], float)
    with torch.no_grad():
        logits = model.eval()({k: v[None] for k, v in sample.items()})["target"]
    spec = model.tasks["target"].spec
    assert out["target"][0]["value"] == pytest.approx(float(logits) * spec["target_std"] + spec["target_mean"])


def test_the_preparation_options_are_one_spec_read_with_their_names() -> None:
    """The table datasets' preparation keys are one TablePreparation: a misspelled key names the close one."""
    from core.tabular.preparation import DEFAULT_FRACTION, read_preparation

    assert read_preparation({"seed": 3, "numeric_bins": 0}) == TablePreparation(seed=3, numeric_bins=0)
    assert TablePreparation().val_fraction == TablePreparation().test_fraction == DEFAULT_FRACTION
    with pytest.raises(ConfigError, match=r"unknown key 'data.id_colum'\. Did you mean 'id_column'"):
        read_preparation({"id_colum": "patient"})
