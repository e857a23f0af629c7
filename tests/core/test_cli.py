"""The jointtrain command line, run in-process and (for signals) as a real subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from core.cli import main
from core.model import JointModel

from .helpers import toy_config

ROOT = Path(__file__).resolve().parents[2]


def _write_config(tmp_path: Path, **overrides) -> Path:
    config = toy_config(tmp_path, **overrides).to_dict()
    path = tmp_path / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_evaluate_predict_list(tmp_path, capsys):
    config = _write_config(tmp_path, **{"train.max_steps": 40})
    assert main(["train", str(config)]) == 0
    assert "test metrics of the best checkpoint" in capsys.readouterr().out

    run = tmp_path / "run"
    assert main(["evaluate", str(run), "--split", "val", "--out", str(tmp_path / "val.json")]) == 0
    val = json.loads((tmp_path / "val.json").read_text())
    assert val["split"] == "val" and set(val["tasks"]) == {"digit", "parity"}

    # a bare model directory evaluates too: it records its data spec
    assert main(["evaluate", str(run / "best"), "--out", str(tmp_path / "test.json")]) == 0

    rows = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    out = tmp_path / "pred.json"
    assert main(["predict", str(run), str(tmp_path / "rows.npy"), "--out", str(out), "--tasks", "parity"]) == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == 3 and set(predictions[0]) == {"row", "parity"}
    model = JointModel.from_pretrained(run / "best")
    assert predictions[1]["parity"]["index"] == int(model(torch.from_numpy(rows))["parity"][1].argmax())

    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "uw" in listing and "round_robin" in listing and "spaces=loss" in listing
    assert "upgrad       weighting spaces=rep,params" in listing and "DDP: rep: all-reduces" in listing
    assert "architectures: branched, cgc, cross_stitch" in listing


def test_list_shows_each_methods_declarations(capsys):
    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "pcd          weighting spaces=rep,params" in listing
    assert "state: per-task EMA of squared gradient norms, step counts" in listing
    assert "stateless; properties: mean_when_aligned, non_conflicting, permutation_invariant" in listing  # upgrad
    assert "cosmos       loss     spaces=loss" in listing and "pbi          loss" in listing


def test_bad_input_prints_a_message_not_a_traceback(tmp_path, capsys):
    config = _write_config(tmp_path)
    assert main(["train", str(config), "--set", "balancing.name=nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown balancing method 'nope'") and "Traceback" not in err
    assert main(["predict", str(tmp_path), "x.npy"]) == 2
    assert "not a jointtrain model directory" in capsys.readouterr().err


def _run(config: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", "train", str(config), *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_ctrl_c_checkpoints_and_resume_reaches_the_same_weights(tmp_path):
    overrides = {"train.max_steps": 150, "train.eval_every": 25, "model.backbone.dropout": 0.1}
    reference = _write_config(tmp_path / "ref", **overrides)
    assert _run(reference).wait(timeout=300) == 0

    config = _write_config(tmp_path / "int", **overrides)
    proc = _run(config)
    checkpoint = tmp_path / "int" / "run" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    if proc.returncode == 0:
        pytest.fail("the run finished before the interrupt arrived; raise max_steps")
    assert proc.returncode == 130, output
    assert "--resume" in output
    state = torch.load(checkpoint, weights_only=True)
    assert 0 < state["step"] < 150

    assert _run(config, "--resume").wait(timeout=300) == 0
    a = JointModel.from_pretrained(tmp_path / "ref" / "run" / "final").state_dict()
    b = JointModel.from_pretrained(tmp_path / "int" / "run" / "final").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny trained run shared by the --out tests (they only read it)."""
    from core.experiments.run import train

    config = toy_config(tmp_path_factory.mktemp("trained"), **{"train.max_steps": 4, "train.eval_every": 4})
    train(config)
    return Path(config.output_dir)


@pytest.mark.parametrize("target", ["input", "config.yaml", "results.json", "metrics.jsonl"])
def test_predict_never_writes_onto_its_input_or_a_run_file(trained_run, tmp_path, capsys, target):
    rows = tmp_path / "rows.csv"
    np.savetxt(rows, np.zeros((2, 64)), delimiter=",")
    out = rows if target == "input" else trained_run / target
    before = out.read_bytes()
    argv = ["predict", str(trained_run), str(rows), "--out", str(out)]
    assert main(argv) == 2 and main([*argv, "--overwrite"]) == 2  # --overwrite never covers these
    err = capsys.readouterr().err
    assert "write the output elsewhere" in err and ("the input" in err if target == "input" else "of the run" in err)
    assert out.read_bytes() == before


def test_predict_replaces_an_existing_file_only_with_overwrite(trained_run, tmp_path, capsys):
    rows = tmp_path / "rows.npy"
    np.save(rows, np.zeros((2, 64), dtype=np.float32))
    out = tmp_path / "notes.json"
    out.write_text("mine")
    argv = ["predict", str(trained_run), str(rows), "--out", str(out)]
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and out.read_text() == "mine"
    assert main([*argv, "--overwrite"]) == 0
    assert len(json.loads(out.read_text())["predictions"]) == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_predict_writes_csv_and_jsonl_by_the_name(trained_run, tmp_path):
    import csv

    rows = tmp_path / "rows.npy"
    np.save(rows, np.random.default_rng(0).random((3, 64)).astype(np.float32))
    assert main(["predict", str(trained_run), str(rows), "--out", str(tmp_path / "p.csv")]) == 0
    table = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(table) == 3 and {"row", "digit.label", "digit.probabilities", "parity.index"} <= set(table[0])
    assert len(json.loads(table[0]["digit.probabilities"])) == 10
    assert main(["predict", str(trained_run), str(rows), "--out", str(tmp_path / "p.jsonl")]) == 0
    lines = (tmp_path / "p.jsonl").read_text().splitlines()
    assert [json.loads(line)["row"] for line in lines] == [0, 1, 2]
    assert str(json.loads(lines[1])["digit"]["label"]) == table[1]["digit.label"]


def test_evaluate_scores_a_labelled_file_of_the_users(tmp_path, capsys):
    """A saved table model on a new labelled CSV: the same metrics as its own test split on the same rows,
    and the class order of training even when the file lacks a class."""
    from tests.core.tabular.helpers import LABELS, issue_frame

    frame = issue_frame(120)
    frame["part"] = np.where(np.arange(120) < 80, "train", np.where(np.arange(120) < 100, "val", "test"))
    frame.to_csv(tmp_path / "all.csv", index=False)
    raw = {
        "output_dir": str(tmp_path / "run"),
        "model": {"backbone": {"name": "tabular", "dim": 8}},
        "tasks": {t: {} for t in LABELS},
        "data": {"name": "table", "path": str(tmp_path / "all.csv"), "labels": LABELS, "split_column": "part"},
        "train": {"max_steps": 20, "eval_every": 0, "progress": False},
        "report": {"enabled": False},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "run.yaml")]) == 0
    run = tmp_path / "run"
    test_rows = frame[frame["part"] == "test"].drop(columns=["part"])
    test_rows.to_csv(tmp_path / "new.csv", index=False)
    assert main(["evaluate", str(run), "--out", str(tmp_path / "split.json")]) == 0
    assert main(["evaluate", str(run), "--data", str(tmp_path / "new.csv"), "--out", str(tmp_path / "file.json")]) == 0
    split, scored = (json.loads((tmp_path / f).read_text()) for f in ("split.json", "file.json"))
    assert scored["data"] == str(tmp_path / "new.csv") and set(scored["tasks"]) == set(LABELS)
    for task, metrics in split["tasks"].items():
        assert scored["tasks"][task] == pytest.approx(metrics, rel=1e-5), task

    no_alpha = frame[frame["species"].isin(["beta", "gamma"])].head(15)
    no_alpha.to_csv(tmp_path / "no_alpha.csv", index=False)
    capsys.readouterr()
    assert main(["evaluate", str(run / "best"), "--data", str(tmp_path / "no_alpha.csv")]) == 0
    out = capsys.readouterr().out
    accuracy = float(out.split("species", 1)[1].split("accuracy=", 1)[1].split()[0])
    predicted = JointModel.from_pretrained(run / "best").predict(no_alpha, tasks=["species"])["species"]
    agree = np.mean([p["label"] == s for p, s in zip(predicted, no_alpha["species"], strict=True)])
    assert accuracy == pytest.approx(agree, abs=1e-4) and "not written: pass --out FILE" in out

    assert main(["evaluate", str(run), "--data", str(tmp_path / "nope.csv")]) == 2
    assert "labelled file" in capsys.readouterr().err
    frame.drop(columns=["flag", "species", "target"]).to_csv(tmp_path / "unlabelled.csv", index=False)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "unlabelled.csv")]) == 2
    assert "labels none of the model's tasks; give label column(s): ['flag'] (task 'flag'), ['species']" in (
        capsys.readouterr().err
    )
    frame.drop(columns=["flag", "target"]).head(30).to_csv(tmp_path / "species_only.csv", index=False)
    assert main(["evaluate", str(run), "--data", str(tmp_path / "species_only.csv")]) == 0
    assert "species " in capsys.readouterr().out
