"""Entity-level scores for BIO tagging: exact-span precision, recall and F1 (as conlleval).

A span is (type, first word, end word exclusive). It opens at ``B-X``, or at ``I-X`` after a
tag of another type or ``O`` (conlleval's lenient start); it closes before ``O``, ``B-*`` or a
tag of another type. A predicted entity counts only when type and both boundaries match.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

Span = tuple[str, int, int]


def bio_spans(tags: Sequence[str]) -> list[Span]:
    """Entity spans of a BIO tag sequence."""
    spans: list[Span] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        opens = prefix == "B" or (prefix == "I" and label != kind)
        if kind is not None and (tag == "O" or opens):
            spans.append((kind, start, i))
            kind = None
        if opens:
            kind, start = label, i
    return spans


def span_counts(predicted: Sequence[str], gold: Sequence[str]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of one sentence."""
    pred, true = set(bio_spans(predicted)), set(bio_spans(gold))
    tp = len(pred & true)
    return tp, len(pred) - tp, len(true) - tp


class EntityScore(Metric):
    """Micro-averaged exact-span ``precision``, ``recall`` or ``f1`` over all entity types.

    ``update(preds, target)`` takes tag indices ``(B, L)``; positions where ``target < 0``
    (padding, special and continuation sub-tokens) are dropped, leaving one tag per word.
    """

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0  # its span, for model selection (core.metrics.sense)
    full_state_update = False

    def __init__(self, label_names: Sequence[str], score: str = "f1") -> None:
        super().__init__()
        if score not in ("precision", "recall", "f1"):
            raise ValueError(f"score must be precision, recall or f1, got '{score}'")
        self.label_names, self.score = list(label_names), score
        for state in ("tp", "fp", "fn"):
            self.add_state(state, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        for p_row, t_row in zip(preds.tolist(), target.tolist(), strict=True):
            words = [(p, t) for p, t in zip(p_row, t_row, strict=True) if t >= 0]
            tp, fp, fn = span_counts([self.label_names[p] for p, _ in words], [self.label_names[t] for _, t in words])
            self.tp += tp
            self.fp += fp
            self.fn += fn

    def compute(self) -> Tensor:
        tp, fp, fn = self.tp.double(), self.fp.double(), self.fn.double()
        precision = tp / (tp + fp) if tp + fp > 0 else tp.new_tensor(0.0)
        recall = tp / (tp + fn) if tp + fn > 0 else tp.new_tensor(0.0)
        if self.score == "precision":
            return precision
        if self.score == "recall":
            return recall
        return 2 * precision * recall / (precision + recall) if precision + recall > 0 else tp.new_tensor(0.0)


class ExactMatch(Metric):
    """Share of generated strings equal to their reference (after stripping outer spaces)."""

    higher_is_better = True
    plot_lower_bound, plot_upper_bound = 0.0, 1.0  # its span, for model selection (core.metrics.sense)
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], target: Sequence[Sequence[str]]) -> None:
        self.correct += sum(p.strip() in {r.strip() for r in refs} for p, refs in zip(preds, target, strict=True))
        self.total += len(preds)

    def compute(self) -> Tensor:
        return self.correct.double() / self.total if self.total > 0 else self.correct.new_tensor(0.0).double()


def generation_metric(name: str) -> Callable[[], Metric]:
    """chrF and BLEU as sacreBLEU computes them (torchmetrics ports, states summed across ranks)."""
    from torchmetrics.text import CHRFScore, SacreBLEUScore

    factories: dict[str, Callable[[], Metric]] = {
        "chrf": lambda: CHRFScore(n_word_order=0),  # chrF (torchmetrics defaults to chrF++)
        "bleu": lambda: SacreBLEUScore(tokenize="13a"),
        "exact_match": ExactMatch,
    }
    return factories[name]
