from __future__ import annotations

import pytest
import torch

from nlp.metrics import EntityScore, bio_spans, span_counts


@pytest.mark.parametrize(
    ("tags", "spans"),
    [
        (["O", "O"], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),  # B always opens a new entity
        (["I-PER", "I-PER", "O"], [("PER", 0, 2)]),  # conlleval: I after O opens one
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # type change splits
        (["O", "B-ORG", "I-ORG"], [("ORG", 1, 3)]),  # an entity at the very end closes
    ],
)
def test_bio_spans(tags: list[str], spans: list[tuple[str, int, int]]) -> None:
    assert bio_spans(tags) == spans


def test_span_counts_hand_computed() -> None:
    gold = ["B-PER", "I-PER", "O", "B-LOC", "O", "B-ORG"]
    pred = ["B-PER", "I-PER", "O", "B-ORG", "O", "B-ORG"]  # PER right, LOC mistyped, ORG right
    assert span_counts(pred, gold) == (2, 1, 1)
    # a boundary error counts as one false positive and one false negative
    assert span_counts(["B-PER", "O"], ["B-PER", "I-PER"]) == (0, 1, 1)


def test_entity_score_ignores_unlabelled_positions() -> None:
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    # sentence 1: [CLS] B-PER (sub-token) I-PER O [SEP]; sentence 2 predicts a spurious LOC and misses a PER
    target = torch.tensor([[-100, 1, -100, 2, 0, -100], [-100, 0, 1, 0, -100, -100]])
    preds = torch.tensor([[3, 1, 3, 2, 0, 3], [0, 3, 0, 0, 0, 0]])
    scores = {s: EntityScore(names, s) for s in ("precision", "recall", "f1")}
    for metric in scores.values():
        metric.update(preds, target)
    # tp=1 (PER 0-2 in sentence 1), fp=1 (LOC in sentence 2), fn=1 (PER in sentence 2)
    assert scores["precision"].compute().item() == pytest.approx(0.5)
    assert scores["recall"].compute().item() == pytest.approx(0.5)
    assert scores["f1"].compute().item() == pytest.approx(0.5)


def test_entity_score_without_entities_is_zero() -> None:
    metric = EntityScore(["O", "B-X"], "f1")
    metric.update(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    assert metric.compute().item() == 0.0


def test_entity_score_agrees_with_seqeval_on_real_predictions() -> None:
    """The lexicon tagger's tags on the real Twitter NER test split (ill-formed sequences included):
    our scorer equals seqeval's default (conlleval) mode exactly; seqeval's strict IOB2 mode drops
    entities that open with I-, so it may only score lower."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    from nlp.baselines import lexicon_tags, read_jsonl
    from nlp.corpora import prepare

    root = prepare()
    train, test = read_jsonl(root / "ner" / "train.jsonl"), read_jsonl(root / "ner" / "test.jsonl")
    predicted, gold = lexicon_tags(train, test), [e["tags"] for e in test]
    assert any(p[i].startswith("I-") and (i == 0 or p[i - 1] == "O") for p in predicted for i in range(len(p)))
    names = sorted({t for row in predicted + gold for t in row})
    ours = {s: EntityScore(names, s) for s in ("precision", "recall", "f1")}
    for p_row, g_row in zip(predicted, gold, strict=True):
        for metric in ours.values():
            metric.update(
                torch.tensor([[names.index(t) for t in p_row]]), torch.tensor([[names.index(t) for t in g_row]])
            )
    assert float(ours["f1"].compute()) == pytest.approx(f1_score(gold, predicted), abs=1e-12)
    assert float(ours["precision"].compute()) == pytest.approx(precision_score(gold, predicted), abs=1e-12)
    assert float(ours["recall"].compute()) == pytest.approx(recall_score(gold, predicted), abs=1e-12)
    assert f1_score(gold, predicted, mode="strict", scheme=IOB2) <= f1_score(gold, predicted) + 1e-12
