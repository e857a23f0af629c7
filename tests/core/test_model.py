from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.backbones import BACKBONES
from core.errors import CheckpointError, ConfigError
from core.model import JointModel
from core.tasks import build_task


def _model(head_dropout: float = 0.0) -> JointModel:
    backbone = BACKBONES.build({"name": "mlp", "in_dim": 8, "hidden": [16]})
    tasks = [
        build_task("a", {"type": "classification", "num_classes": 3, "label_names": ["x", "y", "z"]}, backbone),
        build_task("b", {"type": "regression", "head": {"name": "mlp", "hidden": [8]}}, backbone),
        build_task("c", {"type": "multilabel", "num_labels": 4}, backbone),
    ]
    return JointModel(backbone, tasks, {"name": "mlp", "in_dim": 8, "hidden": [16]}, head_dropout, {"note": "kept"})


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = _model(head_dropout=0.3).eval()
    x = torch.randn(5, 8)
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = JointModel.from_pretrained(tmp_path / "m").eval()
    before, after = model(x), loaded(x)
    assert all(torch.equal(before[t], after[t]) for t in before)
    assert loaded.tasks["a"].label_names == ["x", "y", "z"] and loaded.extra == {"note": "kept"}
    assert loaded.head_dropout.p == 0.3


def test_loading_a_subset_of_heads(tmp_path):
    model = _model().eval()
    model.save_pretrained(tmp_path / "m")
    only_a = JointModel.from_pretrained(tmp_path / "m", tasks=["a"]).eval()
    x = torch.randn(2, 8)
    assert list(only_a(x)) == ["a"] and torch.equal(only_a(x)["a"], model(x)["a"])
    with pytest.raises(CheckpointError, match=r"tasks \['zz'\] are not in this model"):
        JointModel.from_pretrained(tmp_path / "m", tasks=["zz"])


def test_parameter_partition_covers_everything_once():
    model = _model()
    shared = {id(p) for p in model.shared_parameters()}
    heads = [{id(p) for p in model.task_parameters(t)} for t in model.tasks]
    everything = {id(p) for p in model.parameters()}
    assert shared.isdisjoint(set().union(*heads)) and shared | set().union(*heads) == everything


def test_predict_returns_json_friendly_records():
    out = _model().predict(torch.randn(2, 8))
    assert out["a"][0]["label"] in ("x", "y", "z") and len(out["a"][0]["probabilities"]) == 3
    assert len(out["c"][0]["probabilities"]) == 4 and all(0 <= p <= 1 for p in out["c"][0]["probabilities"])
    json.dumps(out)


def test_missing_corrupt_and_mismatched_directories_fail_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="not a jointtrain model directory"):
        JointModel.from_pretrained(tmp_path)
    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        JointModel.from_pretrained(tmp_path / "m")
    _model().save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["tasks"]["c"]["num_labels"] = 5
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match its config"):
        JointModel.from_pretrained(tmp_path / "m")


def test_save_is_atomic_and_replaces_an_existing_directory(tmp_path):
    model = _model()
    model.save_pretrained(tmp_path / "m")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(tmp_path / "m")
    assert [p.name for p in tmp_path.iterdir()] == ["m"], "no temporary directory is left behind"
    loaded = JointModel.from_pretrained(tmp_path / "m")
    assert torch.equal(next(loaded.parameters()), next(model.parameters()))


def test_loading_never_runs_code_named_in_a_model_folder(tmp_path, monkeypatch):
    """A config.json naming ``os:system`` must be refused before anything runs (no trust_remote_code)."""
    model = JointModel.from_config(
        {"backbone": {"name": "mlp", "in_dim": 4, "hidden": [4]}, "tasks": {"a": {"type": "regression"}}}
    )
    model.save_pretrained(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    marker = tmp_path / "pwned"
    config["backbone"] = {"name": "os:system", "command": f"touch {marker}"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"names the import path 'os:system'.*trust_remote_code=True"):
        JointModel.from_pretrained(tmp_path / "m")
    assert not marker.exists()
    # the same through the command line
    from core.cli import main

    np.save(tmp_path / "x.npy", np.zeros((1, 4), dtype=np.float32))
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json")]) == 2
    assert not marker.exists()
    # a head spec nested in a task is guarded as well
    config["backbone"] = {"name": "mlp", "in_dim": 4, "hidden": [4]}
    config["tasks"]["a"]["head"] = {"name": "os:system", "command": f"touch {marker}"}
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="trust_remote_code"):
        JointModel.from_pretrained(tmp_path / "m")
    assert not marker.exists()


def test_trusted_import_paths_load(tmp_path):
    model = JointModel.from_config(
        {
            "backbone": {"name": "core.backbones:MLPBackbone", "in_dim": 4, "hidden": [4]},
            "tasks": {"a": {"type": "regression"}},
        }
    )
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match=r"core\.backbones:MLPBackbone"):
        JointModel.from_pretrained(tmp_path / "m")
    assert JointModel.from_pretrained(tmp_path / "m", trust_remote_code=True).tasks.keys() == {"a"}


def _width_model() -> JointModel:
    model = _model()
    model.extra = {"predictor": "tensor", "input_shape": [8]}
    return model


def test_predict_reads_arrays_like_tensors():
    model, x = _width_model(), torch.randn(3, 8)
    expected = model.predict(x)
    assert model.predict(x.numpy()) == expected
    assert [p["index"] for p in model.predict(x.tolist())["a"]] == [p["index"] for p in expected["a"]]


def test_predict_names_the_valid_tasks():
    with pytest.raises(ConfigError, match=r"unknown task 'aa'\. Did you mean 'a'\? This model's tasks: a, b, c"):
        _model().predict(torch.randn(2, 8), tasks=["aa"])
    assert list(_model().predict(torch.randn(2, 8), tasks="b")) == ["b"]


@pytest.mark.parametrize(
    ("shape", "fix"),
    [((2, 10), r"give every sample the features the model was trained on"), ((8,), r"one sample: x\.reshape\(1, 8\)")],
)
def test_predict_names_a_wrong_input_width_and_the_fix(shape, fix):
    from core.errors import DataError

    with pytest.raises(
        DataError, match=rf"inputs have shape \[{', '.join(map(str, shape))}\]; this model expects \[N, 8\].*{fix}"
    ):
        _width_model().predict(torch.randn(*shape))


def test_table_model_predicts_a_dataframe_records_and_a_file(tmp_path):
    """``predict(DataFrame)`` used to fail with KeyError: 'numeric'."""
    from core.cli import main
    from core.config import load_config
    from core.experiments.run import train
    from tests.core.tabular.helpers import LABELS, issue_frame

    issue_frame(60).to_csv(tmp_path / "train.csv", index=False)
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": {"name": "tabular", "dim": 8}},
        "tasks": {t: {} for t in LABELS},
        "data": {"name": "table", "path": str(tmp_path / "train.csv"), "labels": LABELS},
        "train": {"max_steps": 2, "eval_every": 0, "progress": False},
        "report": {"enabled": False},
    }
    train(load_config(raw=raw))
    model = JointModel.from_pretrained(tmp_path / "run" / "best")
    new = issue_frame(5, seed=3).drop(columns=list(LABELS))
    new.to_csv(tmp_path / "new.csv", index=False)
    from_frame = model.predict(new)
    assert set(from_frame) == set(LABELS) and len(from_frame["species"]) == 5
    assert model.predict(new.to_dict("records")) == from_frame
    assert model.predict(str(tmp_path / "new.csv"), tasks=["target"]) == {"target": from_frame["target"]}
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.json")]) == 0
    cli = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [r["species"] for r in cli] == from_frame["species"]
    from core.errors import DataError

    with pytest.raises(DataError, match=r"the DataFrame: missing feature column\(s\) \['x3'\]"):
        model.predict(new.drop(columns=["x3"]))
    with pytest.raises(DataError, match=r"a table model reads a pandas DataFrame"):
        model.predict(42)
