"""The README's quickstarts run as written, and its commands agree with CI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from core.config import load_config
from core.experiments.run import train

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _block(section: str, language: str) -> str:
    body = README.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    match = re.search(rf"```{language}\n(.*?)```", body, re.S)
    assert match, f"no {language} block under '{section}'"
    return match.group(1)


def test_python_quickstart_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(_block("Python quickstart", "python"), "README-python-quickstart", "exec"), {})
    out = capsys.readouterr().out
    accuracy = float(re.search(r"'digit': \{'accuracy': ([0-9.]+)", out).group(1))
    assert accuracy > 0.85
    assert (tmp_path / "runs" / "quickstart" / "model" / "model.safetensors").is_file()


def test_own_loop_snippet_balances_a_plain_loop(capsys):
    namespace: dict = {}
    exec(compile(_block("Use it in your own loop", "python"), "README-own-loop", "exec"), namespace)
    weights = namespace["weights"]
    assert set(weights) == {"a", "b"} and all(w > 0 for w in weights.values())
    assert capsys.readouterr().out.startswith("{'a': ")


def test_yaml_quickstart_trains(tmp_path):
    raw = yaml.safe_load(_block("YAML quickstart", "yaml"))
    config = load_config(
        raw=raw,
        overrides=[
            f"output_dir={tmp_path / 'run'}",
            "train.max_steps=60",
            "train.eval_every=30",
            "finetune.steps=5",
            "train.progress=false",
        ],
    )
    report = train(config)
    assert report["tasks"]["digit"]["accuracy"] > 0.5 and set(report["finetune"]) == {"digit", "parity", "large"}


def test_readme_commands_match_ci():
    first = [line for line in README.splitlines()[:6] if line.startswith("make ")]
    assert [line.split()[1] for line in first] == ["demo", "test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_own_csv_quickstart_trains_and_predicts(tmp_path, capsys):
    from core.cli import main
    from tests.core.tabular.test_docs import patients

    raw = yaml.safe_load(_block("Your own CSV", "yaml"))
    patients().to_csv(tmp_path / "patients.csv", index=False)
    path = tmp_path / "patients.yaml"
    raw["output_dir"] = str(tmp_path / "runs" / "patients")
    raw["train"].update(max_steps=30, eval_every=15, progress=False)
    raw["report"] = {"enabled": False}
    path.write_text(yaml.safe_dump(raw))
    assert main(["train", str(path)]) == 0
    patients(20).drop(columns=["grade", "smoker", "bmi"]).to_csv(tmp_path / "new_rows.csv", index=False)
    out = tmp_path / "predictions.json"
    assert main(["predict", raw["output_dir"], str(tmp_path / "new_rows.csv"), "--out", str(out)]) == 0
    record = json.loads(out.read_text())["predictions"][0]
    assert set(record["grade"]) == {"label", "index", "probabilities"} and "value" in record["bmi"]


def test_extending_example_trains_from_yaml(tmp_path, monkeypatch):
    body = README.split("## Extending", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", body, re.S).group(1)
    raw = yaml.safe_load(re.search(r"```yaml\n(.*?)```", body, re.S).group(1))
    (tmp_path / "mypkg.py").write_text(code)
    monkeypatch.chdir(tmp_path)
    raw["train"].update(max_steps=60, progress=False)
    raw["report"] = {"enabled": False}
    report = train(load_config(raw=raw))
    assert report["tasks"]["cultivar"]["accuracy"] > 0.8 and "mae" in report["tasks"]["alcohol"]


def _trained_for_predict_snippets(root: Path) -> None:
    """Tiny stand-ins for the runs the README's "Predict from Python" snippets load, at their paths."""
    from core.cli import main
    from tests.core.tabular.test_docs import patients
    from tests.nlp.conftest import make_encoder
    from tests.nlp.test_train import make_data, run_config
    from tests.vision.helpers import vision_config

    raw = yaml.safe_load(_block("Your own CSV", "yaml"))
    patients().to_csv(root / "patients.csv", index=False)
    raw["output_dir"] = str(root / "runs" / "patients")
    raw["train"].update(max_steps=10, eval_every=0, progress=False)
    raw["report"] = {"enabled": False}
    (root / "patients.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(root / "patients.yaml")]) == 0
    patients(20).drop(columns=["grade", "smoker", "bmi"]).to_csv(root / "new_rows.csv", index=False)

    encoder = str(make_encoder(root / "encoder", extra_words=("gorgeous", "witty", "flew", "with")))
    train(run_config(encoder, make_data(root / "text"), root / "runs" / "nlp_demo"))

    config = vision_config(
        root, root / "scenes", {"output_dir": str(root / "runs" / "vision_digits"), "report.enabled": False}
    )
    train(config)
    scene = next((root / "scenes").glob("scenes-*/images/test_00000.png"))
    (root / "scene.png").write_bytes(scene.read_bytes())


def test_predict_from_python_snippets_run(tmp_path, monkeypatch, capsys):
    """One snippet per domain: a table, text and image model each predict from what a user has."""
    monkeypatch.chdir(tmp_path)
    _trained_for_predict_snippets(tmp_path)
    body = README.split("## Predict from Python", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```python\n(.*?)```", body, re.S)
    assert len(snippets) == 3
    outputs = []
    for i, code in enumerate(snippets):
        capsys.readouterr()
        exec(compile(code, f"README-predict-{i}", "exec"), {})
        outputs.append(capsys.readouterr().out)
    table, text, image = outputs
    assert "'probabilities': [" in table and "{'bmi': [{'value': " in table
    assert text.split()[0] in ("neg", "pos") and "[" in text
    assert image.split()[0] in ("1", "2", "3") and "[" in image
