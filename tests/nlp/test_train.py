"""End to end with a tiny local encoder: train, save, reload, predict on raw text."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from core.cli import main as cli
from core.config import RunConfig, load_config
from core.experiments.run import train
from core.model import JointModel
from nlp.predict import entities, predict_records, words_with_offsets

from .conftest import write_jsonl

TAG_NAMES = ["O", "B-person", "I-person", "B-geo-loc"]


def make_data(root: Path, n: int = 24) -> dict[str, Any]:
    rng = random.Random(0)
    reviews, tagged = [], []
    for i in range(n):
        good = i % 2 == 0
        words = rng.sample(["great", "good", "fun"] if good else ["bad", "awful", "boring"], 2)
        reviews.append(
            {"id": f"r{i}", "text": f"the movie was {words[0]} and {words[1]}", "label": "pos" if good else "neg"}
        )
        person, place = rng.choice(["alice", "bob"]), rng.choice(["paris", "london"])
        tagged.append({"tokens": [person, "went", "to", place, "!"], "tags": ["B-person", "O", "O", "B-geo-loc", "O"]})
    sources = {}
    for name, rows, extra in (
        ("reviews", reviews, {"id": "id", "labels": {"sentiment": "label"}}),
        (
            "tweets",
            tagged,
            {"tokens": "tokens", "labels": {"ner": {"column": "tags", "kind": "token", "names": TAG_NAMES}}},
        ),
    ):
        files = {s: write_jsonl(root / name / f"{s}.jsonl", rows) for s in ("train", "validation", "test")}
        sources[name] = {"path": "json", "data_files": files, **extra}
    return sources


def run_config(encoder: str, sources: dict[str, Any], out: Path, **backbone: Any) -> RunConfig:
    raw: dict[str, Any] = {
        "output_dir": str(out),
        "model": {"backbone": {"name": "hf_encoder", "model": encoder, **backbone}},
        "tasks": {"sentiment": {"type": "sequence_classification"}, "ner": {"type": "token_classification"}},
        "data": {"name": "text", "sources": sources, "tokenizer": encoder, "max_length": 16},
        "loading": {"batch_size": 4},
        "sampler": {"name": "temperature", "temperature": 2.0},
        "train": {"max_steps": 4, "lr": 1e-3, "eval_every": 0, "progress": False},
    }
    if "report" in {f.name for f in dataclasses.fields(RunConfig)}:
        raw["report"] = {"enabled": False}
    return load_config(raw=raw)


@pytest.fixture(scope="module")
def trained(tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("nlp_run")
    report = train(run_config(tiny_encoder, make_data(root / "data"), root / "run"))
    assert set(report["tasks"]) == {"sentiment", "ner"}
    assert {"accuracy", "f1_macro"} <= set(report["tasks"]["sentiment"])
    assert {"entity_f1", "entity_precision", "entity_recall"} <= set(report["tasks"]["ner"])
    return root / "run"


def test_saved_model_carries_tokenizer_and_label_names(trained: Path) -> None:
    config = json.loads((trained / "best" / "config.json").read_text())
    assert config["tasks"]["sentiment"]["label_names"] == ["neg", "pos"]
    assert config["tasks"]["ner"]["label_names"] == TAG_NAMES
    assert config["extra"]["predictor"] == "text"
    assert (trained / "best" / "tokenizer" / "tokenizer.json").is_file()


def test_round_trip_gives_identical_predictions(trained: Path) -> None:
    model = JointModel.from_pretrained(trained / "best")
    again = JointModel.from_pretrained(trained / "best")
    model.save_pretrained(trained / "copy")
    reloaded = JointModel.from_pretrained(trained / "copy")
    records = [{"text": "alice loves the movie in paris !"}, {"text": "bob hates this boring film"}]
    assert predict_records(model, records) == predict_records(reloaded, records) == predict_records(again, records)
    inputs = dict(model.backbone.tokenizer([r["text"] for r in records], padding=True, return_tensors="pt"))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        for task, out in model(inputs).items():
            torch.testing.assert_close(out, reloaded(inputs)[task], rtol=0, atol=0)


def test_a_model_saved_with_the_old_hand_written_token_spec_loads(trained: Path, tmp_path: Path) -> None:
    """Token tasks' specs were written by hand, without ``num_classes``; such a folder still loads."""
    old = tmp_path / "old"
    JointModel.from_pretrained(trained / "best").save_pretrained(old)
    config = json.loads((old / "config.json").read_text())
    assert config["tasks"]["ner"].pop("num_classes") == len(TAG_NAMES)
    (old / "config.json").write_text(json.dumps(config))
    records = [{"text": "alice went to paris !"}]
    model = JointModel.from_pretrained(old)
    assert predict_records(model, records) == predict_records(JointModel.from_pretrained(trained / "best"), records)
    assert model.tasks["ner"].label_names == TAG_NAMES


def test_predict_on_raw_text_spans_map_back(trained: Path, tmp_path: Path) -> None:
    model = JointModel.from_pretrained(trained / "best")
    with torch.no_grad():  # make the tagger call every word B-person, so spans certainly exist
        model.heads["ner"].net[-1].bias.copy_(torch.tensor([0.0, 100.0, 0.0, 0.0]))
    model.save_pretrained(tmp_path / "model")
    text = "  Alice went to   Paris, loving it!  http://x.co/a"
    (tmp_path / "in.txt").write_text(text + "\n\nbob read a book\n")
    assert cli(["predict", str(tmp_path / "model"), str(tmp_path / "in.txt"), "--out", str(tmp_path / "p.json")]) == 0
    records = json.loads((tmp_path / "p.json").read_text())["predictions"]
    assert [r["text"] for r in records] == [text, "bob read a book"]
    assert records[0]["sentiment"]["label"] in ("neg", "pos")
    found = records[0]["ner"]["entities"]
    assert [e["text"] for e in found] == [w for w, _, _ in words_with_offsets(text)]
    assert found[-1]["text"] == "http://x.co/a"
    for entity in found:
        assert text[entity["start"] : entity["end"]] == entity["text"] and entity["type"] == "person"


def test_entities_join_words_into_character_spans() -> None:
    text = "Bob  Dylan sang in New York."
    words = words_with_offsets(text)
    tags = ["B-person", "I-person", "O", "O", "B-geo-loc", "I-geo-loc", "O"]
    assert entities(text, words, tags) == [
        {"type": "person", "start": 0, "end": 10, "text": "Bob  Dylan"},
        {"type": "geo-loc", "start": 19, "end": 27, "text": "New York"},
    ]


def test_empty_input_line_in_jsonl(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "good"}\n{"text": ""}\n')
    code = cli(["predict", str(trained), str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "p.json")])
    assert code == 2


def test_mismatched_tokenizer_in_saved_model(trained: Path, tmp_path: Path) -> None:
    import shutil

    from core.errors import CheckpointError
    from nlp.encoder import load_tokenizer

    from .conftest import make_encoder

    shutil.copytree(trained / "best", tmp_path / "model")
    other = make_encoder(tmp_path / "other", extra_words=tuple(f"x{i}" for i in range(8)))
    shutil.rmtree(tmp_path / "model" / "tokenizer")
    load_tokenizer(str(other)).save_pretrained(str(tmp_path / "model" / "tokenizer"))
    with pytest.raises(CheckpointError, match="different models"):
        JointModel.from_pretrained(tmp_path / "model")


def test_predict_from_python_takes_strings(trained: Path, tmp_path: Path) -> None:
    """``model.predict(["a sentence"])`` used to fail with a TypeError; it reads what the CLI reads."""
    from core.errors import DataError

    model = JointModel.from_pretrained(trained / "best")
    texts = ["alice loves the movie in paris !", "bob hates this boring film"]
    records = predict_records(model, [{"text": t} for t in texts])
    out = model.predict(texts)
    assert out == {t: [r[t] for r in records] for t in ("sentiment", "ner")}
    (alone,) = model.predict(texts[0], tasks=["sentiment"])["sentiment"]  # a batch of one: no padding
    assert alone["label"] == out["sentiment"][0]["label"]
    assert alone["probabilities"] == pytest.approx(out["sentiment"][0]["probabilities"], abs=1e-6)
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    assert model.predict(tmp_path / "in.txt") == out  # a Path is a file, a str is a text
    paired = model.predict([(texts[0], texts[1])])
    assert paired["sentiment"] == [
        r["sentiment"] for r in predict_records(model, [{"text": texts[0], "text_pair": texts[1]}])
    ]
    with pytest.raises(DataError, match=r"text input 1 is empty"):
        model.predict(["fine", "  "])
    with pytest.raises(DataError, match=r"text input 0 is a int; give a string"):
        model.predict([3])


def test_evaluate_scores_a_labelled_file_of_the_users(trained: Path, tmp_path: Path, capsys) -> None:
    """``jointtrain evaluate --data`` on a labelled JSONL: the metrics of the same examples as the test split."""
    data = json.loads((trained / "best" / "config.json").read_text())["extra"]["data"]
    out = {}
    for name in ("reviews", "tweets"):
        test_file = data["sources"][name]["data_files"]["test"]
        assert cli(["evaluate", str(trained), "--data", test_file, "--out", str(tmp_path / f"{name}.json")]) == 0
        out[name] = json.loads((tmp_path / f"{name}.json").read_text())["tasks"]
    assert cli(["evaluate", str(trained), "--out", str(tmp_path / "split.json")]) == 0
    split = json.loads((tmp_path / "split.json").read_text())["tasks"]
    assert set(out["reviews"]) == {"sentiment"} and set(out["tweets"]) == {"ner"}
    assert out["reviews"]["sentiment"] == pytest.approx(split["sentiment"], rel=1e-5)
    assert out["tweets"]["ner"] == pytest.approx(split["ner"], rel=1e-5)
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "a good film", "label": "meh"}])
    assert cli(["evaluate", str(trained), "--data", str(tmp_path / "bad.jsonl")]) == 2
    assert "label 'meh' is not in the label list ['neg', 'pos']" in capsys.readouterr().err
    write_jsonl(tmp_path / "no_text.jsonl", [{"review": "a good film", "label": "pos"}])
    assert cli(["evaluate", str(trained), "--data", str(tmp_path / "no_text.jsonl")]) == 2
    assert "column(s) ['text'] missing: the input of tasks ['sentiment']" in capsys.readouterr().err
