"""Bad input gets one clear message naming the problem and the fix, never a traceback.

A matrix over the command line: each case writes a config (or a file), runs ``jointtrain`` and
checks the exit code 2 and the message. New failure modes get a row here so none regresses.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from core.cli import main
from core.data import DictDataset, Source
from core.errors import ConfigError, DataError
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


def _table_run(tmp_path: Path, rows: str, labels: str, tasks: str = "{y: {}}", name: str = "rows.csv") -> list[str]:
    """``jointtrain train`` on a small table file ``rows`` (written as ``name``) with ``labels``."""
    (tmp_path / name).write_text(rows)
    config = f"""
output_dir: {tmp_path / "run"}
model: {{backbone: {{name: tabular, dim: 8, encoder: {{name: mlp, depth: 1}}}}}}
tasks: {tasks}
data: {{name: table, path: {name}, labels: {labels}}}
loading: {{batch_size: 4}}
train: {{max_steps: 2, eval_every: 0, progress: false}}
report: {{enabled: false}}
"""
    return ["train", str(_yaml(tmp_path, config))]


def _csv(labels: list[str], header: str = "x,z,y") -> str:
    """A table with two numeric features and the label column ``y`` (one row per label, in order)."""
    return header + "\n" + "".join(f"{i},{i % 3},{y}\n" for i, y in enumerate(labels))


_CLASSES = [c for _ in range(10) for c in "abc"]  # 30 rows, 3 classes


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
    "duplicate task key in a YAML config": (
        lambda t: _table_run(t, _csv(["1", "0"] * 15), "{y: binary}", "{y: {type: binary}, y: {type: regression}}"),
        r"run\.yaml: key 'y' is given twice in one mapping \(both on line 4\).*Remove or rename one",
    ),
    "duplicate label key in a YAML config": (
        lambda t: _table_run(t, _csv(["1", "0"] * 15), "{y: binary, y: regression}"),
        r"run\.yaml: key 'y' is given twice in one mapping \(both on line 5\)",
    ),
    "num_classes contradicted by the labels": (
        lambda t: _table_run(t, _csv(_CLASSES), "{y: classification}", "{y: {num_classes: 5}}"),
        r"task 'y': tasks\.y\.num_classes is 5 but the data's labels give 3; remove tasks\.y\.num_classes",
    ),
    "duplicate CSV header": (
        lambda t: _table_run(t, _csv(_CLASSES, header="x,x,y"), "{y: classification}"),
        r"rows\.csv: the header \(row 1\) names column 'x' twice \(columns 1 and 2\); rename or remove one",
    ),
    "header-only CSV": (
        lambda t: _table_run(t, "x,z,y\n", "{y: classification}"),
        r"rows\.csv has no data rows \(only \['x', 'z', 'y'\]\); add rows below the header",
    ),
    "truncated JSON-lines row": (
        lambda t: _table_run(t, '{"x": 1, "y": 0}\n{"x": 2, "y": 1}\n{"x": 3, "y"\n', "{y: binary}", name="rows.jsonl"),
        r"rows\.jsonl, line 3: not valid JSON .*fix or remove the line",
    ),
    "label error names the row as in the file": (
        lambda t: _table_run(t, _csv(["1", "0", "1", "maybe"] + ["0", "1"] * 13), "{y: binary}"),
        r"rows\.csv: label column 'y' has the value 'maybe' at row 5 \(header = row 1\)",
    ),
}


def _exits_with_a_clear_message(tmp_path: Path, capsys: Any, make: Callable[[Path], list[str]], message: str) -> None:
    import re

    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 64), dtype=np.float32))
    argv = make(tmp_path)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert re.search(message, err, re.S), err


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_message(tmp_path, capsys, case):
    _exits_with_a_clear_message(tmp_path, capsys, *CASES[case])


@functools.cache
def _tokenizer() -> str:
    """A tiny local BERT tokenizer (built once per session, no download)."""
    from tests.nlp.conftest import make_encoder

    return str(make_encoder(Path(tempfile.mkdtemp()) / "tiny_bert"))


def _text(tmp_path: Path, files: dict[str, list[dict[str, Any]]], **source: Any) -> Any:
    """``text_data`` over JSON-lines files ``{split: rows}`` labelling ``sentiment`` from ``label``."""
    from nlp.data import text_data

    paths = {}
    for split, rows in files.items():
        paths[split] = str(tmp_path / f"{split}.jsonl")
        Path(paths[split]).write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"path": "json", "data_files": paths, "labels": {"sentiment": "label"}, **source}
    return text_data({"reviews": spec}, tokenizer=_tokenizer())


_REVIEWS = [{"text": f"film {i} was good", "label": "pos" if i % 2 else "neg"} for i in range(20)]


def _truncated_jsonl(tmp_path: Path) -> Any:
    (tmp_path / "train.jsonl").write_text(json.dumps(_REVIEWS[0]) + "\n" + '{"text": "a good fi\n')
    from nlp.data import text_data

    spec = {"path": "json", "data_files": {"train": str(tmp_path / "train.jsonl")}, "labels": {"sentiment": "label"}}
    return text_data({"reviews": spec}, tokenizer=_tokenizer())


def _without_validation_labels(tmp_path: Path) -> None:
    from core.data import check_sources
    from core.tabular.dataset import table

    rows = [f"{i},{i % 3},{i % 2},{'' if split != 'train' else i % 2},{split}\n" for i, split in
            enumerate(["train"] * 20 + ["val"] * 5 + ["test"] * 5)]  # fmt: skip
    (tmp_path / "rows.csv").write_text("x,z,a,b,part\n" + "".join(rows))
    check_sources(table(str(tmp_path / "rows.csv"), {"a": "binary", "b": "binary"}, split_column="part"), ["a", "b"])


def _train_folder_only(tmp_path: Path) -> Any:
    from PIL import Image

    from vision.data.bundle import images

    for shape in ("round", "square"):
        (tmp_path / "train" / shape).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "train" / shape / "a.png")
    source = {"name": "shapes", "format": "folder", "train": str(tmp_path / "train"), "task": "shape"}
    return images([source], image_size=8)


def _nan_inputs(tmp_path: Path) -> DictDataset:
    inputs = torch.ones(6, 4)
    inputs[[1, 4], 3] = float("nan")
    return DictDataset({"inputs": inputs, "y": torch.zeros(6)})


def _label_outlier(tmp_path: Path) -> Any:
    from core.tabular.dataset import table

    (tmp_path / "rows.csv").write_text(
        _csv([f"{i % 7}.5" for i in range(2)] + ["-1e12"] + [f"{i % 7}.5" for i in range(27)])
    )
    return table(str(tmp_path / "rows.csv"), {"y": "regression"})


#: bad input reaching the Python API (datasets, sources): ``(make(tmp_path), error or warning class, message)``
API_CASES: dict[str, tuple[Callable[[Path], Any], type[Exception], str]] = {
    "duplicate task in a Python Source": (
        lambda t: Source("s", DictDataset({"inputs": torch.zeros(4, 2)}), ["a", "b", "a"]),
        ConfigError,
        r"source 's' lists task\(s\) \['a'\] more than once; list each task once",
    ),
    "non-finite input features": (
        _nan_inputs,
        DataError,
        r"input 'inputs' has 2 NaN / inf value\(s\) in column\(s\) \[3\] of row\(s\) \[1, 4\].*impute or drop",
    ),
    "a task without validation labels": (
        _without_validation_labels,
        UserWarning,
        r"tasks \['b'\] have no validation labels: they are left out of model selection",
    ),
    "image folder source with only a train folder": (
        _train_folder_only,
        UserWarning,
        r"data source 'shapes' gives no val and no test folder: its task\(s\) \['shape'\] are never validated "
        r"\(model selection\) nor tested; add val: <folder> and test: <folder>",
    ),
    "regression label outlier": (
        _label_outlier,
        UserWarning,
        r"rows\.csv: label column 'y': 1 label\(s\) lie more than 50 interquartile ranges outside the others "
        r"\(-1e\+12 at row 4 \(header = row 1\)",
    ),
    "text column typo": (
        lambda t: _text(t, {"train": _REVIEWS}, text="txt"),
        DataError,
        r"split 'train': the text column 'txt' is not in the data; it has \['text', 'label'\]\. Did you mean 'text'\?",
    ),
    "truncated JSON-lines row of a text source": (
        _truncated_jsonl,
        DataError,
        r"data source 'reviews': .*train\.jsonl, line 2: not valid JSON",
    ),
    "text error names the example's line in the file": (
        lambda t: _text(t, {"train": [*_REVIEWS[:4], {"text": " ", "label": "pos"}, *_REVIEWS[4:]]}),
        DataError,
        r"split '(train|validation|test)', line 5: empty text in column 'text'",
    ),
    "text test split carved silently from train": (
        lambda t: _text(t, {"train": _REVIEWS, "validation": _REVIEWS[:6]}),
        UserWarning,
        r"data source 'reviews' gives validation but no test split: its tasks are not tested",
    ),
}


@pytest.mark.parametrize("case", list(API_CASES))
def test_bad_input_through_the_python_api_is_a_clear_message(tmp_path, case):
    make, kind, message = API_CASES[case]
    expect = pytest.warns if issubclass(kind, Warning) else pytest.raises
    with expect(kind, match=message):
        make(tmp_path)


def test_a_text_task_may_be_named_after_its_label_column(tmp_path):
    """``language: language`` on a CSV used to fail with a TypeError when counting labelled examples."""
    from nlp.data import text_data

    rows = "text,language\n" + "".join(f"film {i},{'en' if i % 2 else 'fr'}\n" for i in range(12))
    (tmp_path / "train.csv").write_text(rows)
    spec = {"path": "csv", "data_files": {"train": str(tmp_path / "train.csv")}, "labels": {"language": "language"}}
    bundle = text_data({"texts": spec}, tokenizer=_tokenizer(), val_fraction=0.25, test_fraction=0.25)
    assert bundle.train[0].dataset.labelled_counts() == {"language": 6}
    batch = bundle.train[0].collate_fn([bundle.train[0].dataset[i] for i in range(2)])
    assert batch["language"].dtype == torch.long and set(batch["language"].tolist()) <= {0, 1}


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
    _exits_with_a_clear_message(tmp_path, capsys, *PREDICT_CASES[case])
