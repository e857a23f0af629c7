from __future__ import annotations

import json

import pytest

from nlp import corpora, gen_corpora
from nlp.conll import parse_conll
from nlp.metrics import generation_metric


def test_extraction_target_lists_entities_in_order() -> None:
    (words, tags), _ = parse_conll(
        "Bob\tB-person\nDylan\tI-person\nin\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\nhi\tO\n", "x"
    )
    assert gen_corpora.extraction_target(words, tags) == "person: Bob Dylan; geo-loc: New York"
    assert gen_corpora.extraction_target(["hi"], ["O"]) == ""


def test_prepared_corpora_are_checksummed_and_split_like_the_ner_task() -> None:
    root = gen_corpora.prepare()
    manifest = json.loads((root / "manifest.json").read_text())
    assert set(manifest["sizes"]) == {"extract", "num_en", "num_fr", "num_es"}
    ner_root = corpora.prepare()
    for split in ("train", "test"):  # every extraction example sits in the ner task's split of its tweet
        ner_ids = {e["id"] for e in gen_corpora.read_split(ner_root, "ner", split)}
        assert {e["id"] for e in gen_corpora.read_split(root, "extract", split)} <= ner_ids
    numbers = {s: {e["id"] for e in gen_corpora.read_split(root, "num_en", s)} for s in ("train", "validation", "test")}
    assert not (numbers["train"] & numbers["test"]) and not (numbers["train"] & numbers["validation"])
    fr = {e["id"]: e for e in gen_corpora.read_split(root, "num_fr", "test")}
    assert set(fr) == numbers["test"]  # the same numbers in every language
    example = fr["n" + "".join(next(iter(fr.values()))["text"].split())]
    assert example["target"] and example["text"].replace(" ", "").isdigit()


def test_bleu_and_chrf_match_sacrebleu_on_real_strings() -> None:
    """torchmetrics' ports (what the generation tasks log) against sacrebleu on the Spanish and French
    verbalisations of the same test numbers (real, partly overlapping strings)."""
    import sacrebleu

    root = gen_corpora.prepare()
    refs = [e["target"] for e in gen_corpora.read_split(root, "num_fr", "test")]
    hyps = [e["target"] for e in gen_corpora.read_split(root, "num_es", "test")]
    scores = {}
    for name in ("bleu", "chrf"):
        metric = generation_metric(name)()
        metric.update(hyps, [[r] for r in refs])
        scores[name] = 100 * float(metric.compute())
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-3)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score, abs=1e-3)
    assert 0 < scores["chrf"] < 100
