"""Simple reference points on the same splits: TF-IDF + logistic regression, a NER lexicon, and for
generation tasks copying the input and always answering the most frequent training target."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from .metrics import generation_metric, span_counts


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def tfidf_logreg(root: Path, task: str, seed: int = 0) -> dict[str, float]:
    """Word 1-2-gram TF-IDF + logistic regression on ``root/<task>/{train,test}.jsonl``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline

    train, test = read_jsonl(root / task / "train.jsonl"), read_jsonl(root / task / "test.jsonl")
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        LogisticRegression(C=4.0, max_iter=2000, random_state=seed),
    )
    model.fit([e["text"] for e in train], [e["label"] for e in train])
    predicted = model.predict([e["text"] for e in test])
    gold = [e["label"] for e in test]
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "f1_macro": float(f1_score(gold, predicted, average="macro")),
    }


def lexicon_tags(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> list[list[str]]:
    """Each test word's most frequent training tag (unseen words: O)."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for e in train:
        for word, tag in zip(e["tokens"], e["tags"], strict=True):
            counts[word.lower()][tag] += 1
    return [[counts[w.lower()].most_common(1)[0][0] if w.lower() in counts else "O" for w in e["tokens"]] for e in test]


def ner_lexicon(root: Path, task: str = "ner") -> dict[str, float]:
    """The word-tag lexicon tagger (:func:`lexicon_tags`) scored by exact entity spans."""
    train, test = read_jsonl(root / task / "train.jsonl"), read_jsonl(root / task / "test.jsonl")
    tp = fp = fn = 0
    for e, predicted in zip(test, lexicon_tags(train, test), strict=True):
        a, b, c = span_counts(predicted, e["tags"])
        tp, fp, fn = tp + a, fp + b, fn + c
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall}


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
    train, test = read_jsonl(root / task / "train.jsonl"), read_jsonl(root / task / "test.jsonl")
    majority = Counter(e["target"] for e in train).most_common(1)[0][0]
    references = [e["target"] for e in test]
    return {
        "copy": score_generated([e["text"] for e in test], references, tokenizer, metrics),
        "majority": score_generated([majority] * len(test), references, tokenizer, metrics),
    }
