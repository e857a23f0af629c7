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
