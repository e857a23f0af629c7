"""Bad input gets one clear message naming the problem and the fix, never a traceback.

A matrix over the command line: each case writes a config (or a file), runs ``jointtrain`` and
checks the exit code 2 and the message. New failure modes get a row here so none regresses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.cli import main
from core.experiments.run import train
from tests.core.helpers import toy_config


def _config(tmp_path: Path, **overrides: Any) -> Path:
    raw = toy_config(tmp_path, **overrides).to_dict()
    path = tmp_path / "run.yaml"
    path.write_text(json.dumps(raw))
    return path


def _trained(tmp_path: Path) -> Path:
    config = toy_config(tmp_path, **{"train.max_steps": 4, "train.eval_every": 4})
    train(config)
    return Path(config.output_dir)


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def _per_task_config(tmp_path: Path) -> Path:
    return _config(tmp_path, **{"data.regime": "per_task", "sampler.name": "round_robin"})


def _file(path: Path) -> Path:
    path.write_text("")
    return path


def _corrupt_checkpoint(tmp_path: Path) -> list[str]:
    run = _trained(tmp_path)
    (run / "checkpoints" / "last.pt").write_bytes(b"junk")
    return ["train", str(run / "config.yaml"), "--resume"]


def _corrupt_model(tmp_path: Path) -> list[str]:
    run = _trained(tmp_path)
    (run / "best" / "model.safetensors").write_bytes(b"junk")
    return ["predict", str(run), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json")]


def _unknown_config_key(tmp_path: Path) -> list[str]:
    return ["train", str(_config(tmp_path)), "--set", "train.max_step=10"]


CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "config key typo": (_unknown_config_key, r"unknown key 'config\.train\.max_step'\. Did you mean 'max_steps'"),
    "unknown method": (
        lambda t: ["train", str(_config(t)), "--set", "balancing.name=upgrd"],
        r"unknown balancing method 'upgrd'\. Did you mean 'upgrad'",
    ),
    "component argument typo": (
        lambda t: ["train", str(_config(t)), "--set", "model.backbone.hiden=[8]"],
        r"backbone 'mlp' got an unknown argument 'hiden'\. Did you mean 'hidden'",
    ),
    "yaml top level is a list": (
        lambda t: ["train", str(_yaml(t, "- a\n- b\n"))],
        r"must hold a mapping of sections .* not a list",
    ),
    "invalid yaml": (lambda t: ["train", str(_yaml(t, "a: [\n"))], r"is not valid YAML"),
    "missing config": (lambda t: ["train", str(t / "nope.yaml")], r"config file .*nope\.yaml does not exist"),
    "batch size 0": (
        lambda t: ["train", str(_config(t)), "--set", "loading.batch_size=0"],
        r"loading\.batch_size must be >= 1, got 0",
    ),
    "cuda without a GPU": (
        lambda t: ["train", str(_config(t)), "--device", "cuda"],
        r"no CUDA GPU is available; use device auto or cpu",
    ),
    "output dir is a file": (
        lambda t: ["train", str(_config(t)), "--output-dir", str(_file(t / "taken"))],
        r"exists and is not a folder; choose another output_dir",
    ),
    "resume without a run": (
        lambda t: ["train", str(_config(t)), "--resume"],
        r"no checkpoint at .*last\.pt; start without --resume",
    ),
    "corrupt checkpoint": (_corrupt_checkpoint, r"checkpoint .*last\.pt is corrupt"),
    "corrupt model": (_corrupt_model, r"model\.safetensors is corrupt"),
    "label out of range": (
        lambda t: ["train", str(_config(t)), "--set", "tasks.digit.num_classes=5"],
        r"task 'digit': label \d is out of range for num_classes=5",
    ),
    "gradient method with one source per step": (
        lambda t: ["train", str(_per_task_config(t)), "--set", "balancing.name=mgda"],
        r"needs at least 2 tasks per step.*use sampler 'all'",
    ),
    "import that is not there": (
        lambda t: ["train", str(_config(t)), "--set", "imports=[no_such_module_here]"],
        r"cannot import 'no_such_module_here' listed in 'imports'.* working folder",
    ),
    "predict into the model": (
        lambda t: ["predict", str(_trained(t)), str(t / "x.npy"), "--out", str(t / "run" / "best" / "p.json")],
        r"inside the model folder .*; write predictions elsewhere",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_message(tmp_path, capsys, case):
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 64), dtype=np.float32))
    make, message = CASES[case]
    argv = make(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: "), err
    import re

    assert re.search(message, err, re.S), err


def test_yaml_12_floats_in_overrides_and_files(tmp_path):
    """``1e-3`` is a number (PyYAML alone reads it as a string, which the README's own example hit)."""
    from core.config import load_config

    assert load_config(_config(tmp_path), ["train.lr=1e-3"]).train.lr == pytest.approx(1e-3)
    path = _yaml(tmp_path, _config(tmp_path).read_text())
    raw = json.loads(path.read_text())
    raw["train"]["lr"] = "__LR__"
    path.write_text(json.dumps(raw).replace('"__LR__"', "2e-4"))
    assert load_config(path).train.lr == pytest.approx(2e-4)


def test_imports_find_modules_in_the_working_folder(tmp_path, monkeypatch):
    from core.config import load_config
    from core.experiments.builder import Experiment

    (tmp_path / "my_components.py").write_text(
        "from core.backbones import BACKBONES, MLPBackbone\nBACKBONES.register('my_mlp')(MLPBackbone)\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend  # noqa: B018 - the working folder is added by the loader itself, not the test
    config = load_config(_config(tmp_path), ["imports=[my_components]", "model.backbone.name=my_mlp"])
    assert type(Experiment(config).model().backbone).__name__ == "MLPBackbone"


def test_relative_data_path_is_the_config_folder(tmp_path, monkeypatch):
    from core.config import load_config

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "rows.csv").write_text("a\n1\n")
    path = folder / "run.yaml"
    raw = toy_config(tmp_path).to_dict()
    raw["data"] = {"name": "table", "path": "rows.csv"}
    path.write_text(json.dumps(raw))
    monkeypatch.chdir(tmp_path)
    assert load_config(path).data["path"] == str(folder / "rows.csv")


def test_help_is_fast_because_it_imports_nothing_heavy():
    import subprocess
    import sys

    code = "\n".join(
        [
            "import sys",
            "from core.cli import main",
            "try: main(['--help'])",
            "except SystemExit: pass",
            "print(sorted(sys.modules))",
        ]
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules = out.strip().splitlines()[-1]
    for heavy in ("'torch'", "'timm'", "'transformers'", "'core.engine"):
        assert heavy not in modules, heavy


# -- issue 21: predict / evaluate on a user's own files (the h2-predict block) -------------------------


def _predict_typo(tmp_path: Path) -> list[str]:
    run = _trained(tmp_path)
    return ["predict", str(run.with_name("rnu") / "best"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json")]


def _existing_out(tmp_path: Path) -> list[str]:
    (tmp_path / "p.json").write_text("mine")
    return ["predict", str(_trained(tmp_path)), str(tmp_path / "x.npy"), "--out", str(tmp_path / "p.json")]


PREDICT_CASES: dict[str, tuple[Callable[[Path], list[str]], str]] = {
    "predict onto its own input": (
        lambda t: ["predict", str(_trained(t)), str(t / "x.npy"), "--out", str(t / "x.npy"), "--overwrite"],
        r"would overwrite the input .*x\.npy; write the output elsewhere",
    ),
    "predict onto a run's config": (
        lambda t: ["predict", str(_trained(t)), str(t / "x.npy"), "--out", str(t / "run" / "config.yaml")],
        r"is a file of the run .*; write the output elsewhere",
    ),
    "predict onto an existing file": (_existing_out, r"p\.json already exists; pass --overwrite"),
    "predict onto a folder": (
        lambda t: ["predict", str(_trained(t)), str(t / "x.npy"), "--out", str(t), "--overwrite"],
        r"is a folder; give a file name",
    ),
    "predict from a mistyped run folder": (_predict_typo, r"rnu/best does not exist: there is no .*rnu; did you mean"),
    "detection threshold on a model without detection": (
        lambda t: ["predict", str(_trained(t)), str(t / "x.npy"), "--out", str(t / "p.json"), "--min-score", "0.5"],
        r"--min-score applies to models with a detection task; this one's predictor is 'tensor'",
    ),
    "evaluate a labelled file with a model that cannot read one": (
        lambda t: ["evaluate", str(_trained(t)), "--data", str(t / "x.npy")],
        r"--data reads a labelled file for models whose predictor is one of .*table.*this model's is 'tensor'",
    ),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_predict_and_evaluate_bad_input_is_a_clear_message(tmp_path, capsys, case):
    import re

    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 64), dtype=np.float32))
    make, message = PREDICT_CASES[case]
    argv = make(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, err, re.S), err
