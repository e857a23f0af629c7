"""Hub ids resolve through the hub cache offline; model cards; the push payload (no network)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from core import hub
from core.errors import CheckpointError, ConfigError
from core.model import JointModel

REVISION = "0123456789abcdef0123456789abcdef01234567"


def _model() -> JointModel:
    return JointModel.from_config(
        {
            "backbone": {"name": "mlp", "in_dim": 4, "hidden": [8]},
            "tasks": {
                "kind": {"type": "classification", "num_classes": 2, "label_names": ["cat", "dog"]},
                "size": {"type": "regression"},
            },
        }
    )


def _publish(model_dir: Path, cache: Path, repo_id: str, revision: str = REVISION) -> Path:
    """Lay ``model_dir`` out as huggingface_hub's cache does: ``models--org--name/snapshots/<rev>/``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / revision
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def test_hub_id_loads_from_the_cache_offline(tmp_path: Path, offline: None) -> None:
    model = _model().eval()
    model.save_pretrained(tmp_path / "m")
    _publish(tmp_path / "m", tmp_path / "cache", "acme/pets")
    loaded = JointModel.from_pretrained("acme/pets", cache_dir=tmp_path / "cache").eval()
    x = torch.randn(3, 4)
    assert all(torch.equal(model(x)[t], loaded(x)[t]) for t in model.tasks)
    pinned = JointModel.from_pretrained("acme/pets", revision=REVISION, cache_dir=tmp_path / "cache", tasks=["size"])
    assert list(pinned.tasks) == ["size"]
    with pytest.raises(CheckpointError, match=r"'acme/other' \(revision main\) is neither a local folder nor in the"):
        JointModel.from_pretrained("acme/other", cache_dir=tmp_path / "cache")


def test_import_path_in_a_hub_model_is_refused_unless_trusted(tmp_path: Path, offline: None) -> None:
    _model().save_pretrained(tmp_path / "m")
    snapshot = _publish(tmp_path / "m", tmp_path / "cache", "mallory/model")
    config = json.loads((snapshot / "config.json").read_text())
    config["backbone"] = {"name": "core.backbones:MLPBackbone", "in_dim": 4, "hidden": [8]}
    (snapshot / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"names the import path 'core\.backbones:MLPBackbone'.*trust_remote_code"):
        JointModel.from_pretrained("mallory/model", cache_dir=tmp_path / "cache")
    trusted = JointModel.from_pretrained("mallory/model", cache_dir=tmp_path / "cache", trust_remote_code=True)
    assert set(trusted.tasks) == {"kind", "size"}


def test_revision_on_a_local_folder_is_an_error(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="applies to hub ids only"):
        JointModel.from_pretrained(tmp_path / "m", revision="v1")


def test_model_card_lists_tasks_labels_metrics_and_the_run_config(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    results = {"models": {"best": {"test": {"kind": {"accuracy": 0.875, "loss": 0.3}, "size": {"mae": 1.25}}}}}
    (run / "results.json").write_text(json.dumps(results))
    (run / "config.yaml").write_text("train:\n  max_steps: 7\n")
    _model().save_pretrained(run / "best")
    card = (run / "best" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: jointtrain\n")
    assert "| kind | classification | cat, dog |" in card and "| size | regression | - |" in card
    assert "| test | kind | accuracy | 0.8750 |" in card and "| test | size | mae | 1.2500 |" in card
    assert "loss" not in card.split("## Metrics")[1].split("##")[0]
    assert "max_steps: 7" in card and f"jointtrain {hub.library_version()}" in card
    results["models"]["best"]["val"] = {"kind": {"accuracy": 0.5}}
    (run / "results.json").write_text(json.dumps(results))
    hub.write_card(run / "best")
    assert "| val | kind | accuracy | 0.5000 |" in (run / "best" / "README.md").read_text()
    bare = (tmp_path / "bare").joinpath("m")
    _model().save_pretrained(bare)
    assert "## Metrics" not in (bare / "README.md").read_text()


def test_push_payload_holds_config_weights_card(tmp_path: Path) -> None:
    _model().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "notes.tmp").write_text("scratch")
    assert hub.push_payload(tmp_path / "m") == [Path("README.md"), Path("config.json"), Path("model.safetensors")]
    (tmp_path / "m" / "README.md").unlink()
    with pytest.raises(CheckpointError, match=r"lacks README\.md; save it with JointModel\.save_pretrained"):
        hub.push_payload(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a hub repo id"):
        hub.push_folder(tmp_path / "m", "no-slash")


@pytest.mark.parametrize(("name", "ok"), [("org/name", True), ("a/b.c-d_e", True), ("../x", False), ("a/b/c", False)])
def test_repo_id_shape(name: str, ok: bool) -> None:
    assert hub.is_repo_id(name) is ok


def test_cli_predict_takes_a_hub_id(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from core.cli import main

    _model().save_pretrained(tmp_path / "m")
    _publish(tmp_path / "m", tmp_path / "cache", "acme/pets")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    np.save(tmp_path / "x.npy", np.zeros((2, 4), dtype=np.float32))
    out = tmp_path / "p.json"
    assert main(["predict", "acme/pets", str(tmp_path / "x.npy"), "--out", str(out), "--revision", REVISION]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 2 and predictions[0]["kind"]["label"] in ("cat", "dog")


def test_cli_evaluate_takes_a_hub_id(tmp_path: Path, offline: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trained model published to the hub cache evaluates by id: it records its own data."""
    from core.cli import main
    from core.experiments.run import train

    from .helpers import toy_config

    train(toy_config(tmp_path, **{"train.max_steps": 20}))
    _publish(tmp_path / "run" / "best", tmp_path / "cache", "acme/digits")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "test.json"
    assert main(["evaluate", "acme/digits", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["split"] == "test" and set(results["tasks"]) == {"digit", "parity"}
    assert main(["evaluate", "acme/digits"]) == 2  # never written into the cached snapshot: needs --out


@pytest.mark.parametrize("typo", ["runs/dmeo/best", "runs/dmeo"])
def test_a_mistyped_run_folder_is_missing_not_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], typo: str
) -> None:
    """``runs/dmeo`` has a hub id's shape, but ``runs/`` is a local folder: the message says what is missing."""
    import numpy as np

    from core.cli import main

    _model().save_pretrained(tmp_path / "runs" / "demo" / "best")
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((2, 4), dtype=np.float32))
    assert main(["predict", typo, "x.npy", "--out", "p.json"]) == 2
    err = capsys.readouterr().err
    assert f"{typo} does not exist: there is no runs/dmeo; did you mean {typo.replace('dmeo', 'demo')}?" in err
    assert "hub" not in err.lower()
    with pytest.raises(CheckpointError, match=r"does not exist: there is no runs/dmeo"):
        JointModel.from_pretrained(typo)
    assert main(["evaluate", typo, "--out", "e.json"]) == 2
    assert "did you mean" in capsys.readouterr().err
