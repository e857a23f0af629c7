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
