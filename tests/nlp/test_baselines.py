"""The NLP baselines are tuned on validation before they are compared, and score test once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlp.baselines import ner_lexicon, tfidf_logreg, tune


def write_splits(root: Path, task: str, splits: dict[str, list[dict[str, Any]]]) -> None:
    (root / task).mkdir(parents=True)
    for split, rows in splits.items():
        (root / task / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_tune_keeps_the_validation_argmax_and_scores_only_it_on_test():
    val_score = {1: 0.2, 2: 0.9, 3: 0.9, 4: 0.5}  # a tie: the first (simpler) point wins
    scored: list[tuple[int, str]] = []

    def fit(params: dict[str, Any]):
        def score(split: str) -> dict[str, float]:
            scored.append((params["k"], split))
            return {"acc": val_score[params["k"]] if split == "validation" else -1.0}

        return score

    result = tune({"k": [1, 2, 3, 4]}, fit, "acc")
    assert result == {"test": {"acc": -1.0}, "validation": {"acc": 0.9}, "params": {"k": 2}}
    assert [s for s in scored if s[1] == "test"] == [(2, "test")]


def test_tfidf_picks_c_on_validation_even_when_test_would_prefer_another(tmp_path):
    # C=1e-4 predicts the majority class ('pos'): worse on validation, perfect on this odd test split
    train = [{"text": f"good film {i}", "label": "pos"} for i in range(30)]
    train += [{"text": f"bad film {i}", "label": "neg"} for i in range(20)]
    val = [{"text": "good film", "label": "pos"}] * 5 + [{"text": "bad film", "label": "neg"}] * 5
    test = [{"text": "bad film", "label": "pos"}] * 6
    write_splits(tmp_path, "sentiment", {"train": train, "validation": val, "test": test})
    result = tfidf_logreg(tmp_path, "sentiment", grid={"ngram_max": [1], "C": [1e-4, 10.0]})
    assert result["params"] == {"C": 10.0, "ngram_max": 1}
    assert result["validation"]["accuracy"] == 1.0 and result["test"]["accuracy"] == 0.0


def test_lexicon_picks_min_count_on_validation(tmp_path):
    sentence = {"tokens": ["in", "paris"], "tags": ["O", "B-LOC"]}
    rare = {"tokens": ["bob", "came"], "tags": ["B-PER", "O"]}  # 'bob' seen once
    splits = {
        "train": [sentence] * 5 + [rare],
        "validation": [rare, sentence],  # keeping rare words helps here ...
        "test": [{"tokens": ["bob", "came"], "tags": ["O", "O"]}, sentence],  # ... and would hurt here
    }
    write_splits(tmp_path, "ner", splits)
    result = ner_lexicon(tmp_path, grid={"min_count": [1, 3]})
    assert result["params"] == {"min_count": 1}
    assert result["validation"]["entity_f1"] == 1.0 and result["test"]["entity_precision"] == 0.5
