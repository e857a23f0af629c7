"""Simple reference points on the same splits: TF-IDF + logistic regression and a NER lexicon, each
tuned on the validation split over a small grid (a baseline is tuned before it is compared) and
scored once on test; for generation tasks, copying the input and always answering the most
frequent training target (nothing to tune)."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .metrics import generation_metric, span_counts

#: split name -> metrics of one fitted grid point
Scorer = Callable[[str], dict[str, float]]

#: TF-IDF's longest word n-gram and logistic regression's inverse regularisation strength
TFIDF_GRID: dict[str, list[Any]] = {"ngram_max": [1, 2], "C": [1.0, 4.0, 16.0, 64.0]}
#: a word is tagged from the lexicon only when seen at least this often in training (rare words: O)
LEXICON_GRID: dict[str, list[Any]] = {"min_count": [1, 2, 3, 5]}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def read_split(root: Path, task: str, split: str) -> list[dict[str, Any]]:
    return read_jsonl(root / task / f"{split}.jsonl")


def tune(grid: Mapping[str, Sequence[Any]], fit: Callable[[dict[str, Any]], Scorer], metric: str) -> dict[str, Any]:
    """Fit every grid point, keep the best on validation ``metric`` (the first of ties: the grid's
    earlier, simpler settings) and score only that one on test."""
    from sklearn.model_selection import ParameterGrid

    fitted = [(params, fit(params)) for params in ParameterGrid(dict(grid))]
    val = [scorer("validation") for _, scorer in fitted]
    best = max(range(len(fitted)), key=lambda i: (val[i][metric], -i))
    params, scorer = fitted[best]
    return {"test": scorer("test"), "validation": val[best], "params": params}


def tfidf_logreg(
    root: Path, task: str, seed: int = 0, grid: Mapping[str, Sequence[Any]] = TFIDF_GRID
) -> dict[str, Any]:
    """Word TF-IDF + logistic regression on ``root/<task>/train.jsonl``, tuned on validation accuracy."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    train = read_split(root, task, "train")

    def fit(params: dict[str, Any]) -> Scorer:
        model = make_pipeline(
            TfidfVectorizer(ngram_range=(1, params["ngram_max"]), min_df=2, sublinear_tf=True),
            LogisticRegression(C=params["C"], max_iter=2000, random_state=seed),
        )
        model.fit([e["text"] for e in train], [e["label"] for e in train])

        def score(split: str) -> dict[str, float]:
            examples = read_split(root, task, split)
            gold, predicted = [e["label"] for e in examples], model.predict([e["text"] for e in examples])
            return {
                "accuracy": float(accuracy_score(gold, predicted)),
                "f1_macro": float(f1_score(gold, predicted, average="macro")),
            }

        return score

    return tune(grid, fit, "accuracy")


def lexicon_tags(train: list[dict[str, Any]], test: list[dict[str, Any]], min_count: int = 1) -> list[list[str]]:
    """Each test word's most frequent training tag, when seen at least ``min_count`` times (else O)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in train:
        for word, tag in zip(e["tokens"], e["tags"], strict=True):
            counts[word.lower()][tag] += 1
    lexicon = {w: c.most_common(1)[0][0] for w, c in counts.items() if c.total() >= min_count}
    return [[lexicon.get(w.lower(), "O") for w in e["tokens"]] for e in test]


def entity_scores(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Exact-span entity F1 / precision / recall over a split."""
    tp = fp = fn = 0
    for p, g in zip(predicted, gold, strict=True):
        a, b, c = span_counts(p, g)
        tp, fp, fn = tp + a, fp + b, fn + c
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall}


def ner_lexicon(root: Path, task: str = "ner", grid: Mapping[str, Sequence[Any]] = LEXICON_GRID) -> dict[str, Any]:
    """The word-tag lexicon tagger (:func:`lexicon_tags`), its ``min_count`` tuned on validation entity F1."""
    train = read_split(root, task, "train")

    def fit(params: dict[str, Any]) -> Scorer:
        def score(split: str) -> dict[str, float]:
            examples = read_split(root, task, split)
            return entity_scores(lexicon_tags(train, examples, **params), [e["tags"] for e in examples])

        return score

    return tune(grid, fit, "entity_f1")


def score_generated(
    predicted: list[str], references: list[str], tokenizer: Any, metrics: tuple[str, ...]
) -> dict[str, float]:
    """The generation task's metrics, both sides through the tokenizer's round trip as the task does."""

    def normal(texts: list[str]) -> list[str]:
        ids = tokenizer(texts, truncation=True, max_length=512)["input_ids"]
        return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]

    hyps, refs = normal(predicted), [[r] for r in normal(references)]
    out = {}
    for name in metrics:
        metric = generation_metric(name)()
        metric.update(hyps, refs)
        out[name] = float(metric.compute())
    return out


def copy_and_majority(
    root: Path, task: str, tokenizer: Any, metrics: tuple[str, ...] = ("chrf", "bleu", "exact_match")
) -> dict[str, dict[str, float]]:
    """``copy``: the input text as the output; ``majority``: the most frequent training target."""
    train, test = read_split(root, task, "train"), read_split(root, task, "test")
    majority = Counter(e["target"] for e in train).most_common(1)[0][0]
    references = [e["target"] for e in test]
    return {
        "copy": score_generated([e["text"] for e in test], references, tokenizer, metrics),
        "majority": score_generated([majority] * len(test), references, tokenizer, metrics),
    }
