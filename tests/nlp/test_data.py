from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.errors import DataError
from nlp.data import ROW, encode_batch, label_column, text_data
from nlp.encoder import load_tokenizer
from nlp.label_kinds import IGNORE

from .conftest import write_jsonl

TAGS = {"column": "tags", "kind": "token", "names": ["O", "B-person", "I-person", "B-geo-loc"], "class_label": False}
TOKENS = {"text": None, "text_pair": None, "tokens": "tokens", "id": None}


def _encode(tiny_encoder: str, words: list[list[str]], tags: list[list[str]], max_length: int = 32) -> dict:
    return encode_batch(
        {"tokens": words, "tags": tags, ROW: [f"line {i + 1}" for i in range(len(words))]},
        load_tokenizer(tiny_encoder),
        max_length,
        TOKENS,
        {"ner": TAGS},
        "src",
    )


def test_word_labels_go_on_first_sub_token(tiny_encoder: str) -> None:
    tokenizer = load_tokenizer(tiny_encoder)
    words, tags = ["alice", "playing", "in", "paris"], ["B-person", "O", "O", "B-geo-loc"]
    out = _encode(tiny_encoder, [words], [tags])
    tokens = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    assert tokens == ["[CLS]", "alice", "play", "##ing", "in", "paris", "[SEP]"]
    assert out[label_column("ner")][0] == [IGNORE, 1, 0, IGNORE, 0, 3, IGNORE]
    assert out["truncated"] == [False]


def test_truncation_is_flagged_and_keeps_alignment(tiny_encoder: str) -> None:
    out = _encode(tiny_encoder, [["alice", "playing", "in", "paris"]], [["B-person", "O", "O", "B-geo-loc"]], 5)
    assert out["truncated"] == [True]
    assert out[label_column("ner")][0] == [IGNORE, 1, 0, IGNORE, IGNORE]


def test_token_label_count_mismatch_names_the_example(tiny_encoder: str) -> None:
    with pytest.raises(DataError, match=r"src, line 1: 2 words in column 'tokens' but 1 tags"):
        _encode(tiny_encoder, [["alice", "went"]], [["B-person"]])


def test_unknown_tag_names_the_example(tiny_encoder: str) -> None:
    with pytest.raises(DataError, match=r"line 1: tag 'B-ORG' \(word 0\) is not in the tag list"):
        _encode(tiny_encoder, [["alice"]], [["B-ORG"]])


def _sentiment_source(tmp_path: Path, rows: list[dict], **extra: object) -> dict:
    files = {s: write_jsonl(tmp_path / f"{s}.jsonl", rows) for s in ("train", "validation", "test")}
    return {"path": "json", "data_files": files, "id": "id", "labels": {"sentiment": "label"}, **extra}


def test_empty_text_names_the_example(tiny_encoder: str, tmp_path: Path) -> None:
    rows = [{"id": "r1", "text": "good", "label": "pos"}, {"id": "r2", "text": "  ", "label": "neg"}]
    with pytest.raises(DataError, match=r"split 'train', example 'r2': empty text in column 'text'"):
        text_data({"reviews": _sentiment_source(tmp_path, rows)}, tokenizer=tiny_encoder)


def test_label_not_in_label_list(tiny_encoder: str, tmp_path: Path) -> None:
    rows = [{"id": "r1", "text": "good", "label": "pos"}, {"id": "r2", "text": "bad", "label": "meh"}]
    source = _sentiment_source(tmp_path, rows)
    source["labels"] = {"sentiment": {"column": "label", "names": ["neg", "pos"]}}
    with pytest.raises(DataError, match=r"example 'r2': task 'sentiment': label 'meh' is not in the label list"):
        text_data({"reviews": source}, tokenizer=tiny_encoder)


def test_long_texts_are_truncated_and_counted(
    tiny_encoder: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [{"id": i, "text": "good " * (3 + 20 * (i % 2)), "label": "pos" if i % 2 else "neg"} for i in range(6)]
    with caplog.at_level(logging.WARNING, logger="nlp.data"):
        bundle = text_data({"reviews": _sentiment_source(tmp_path, rows)}, tokenizer=tiny_encoder, max_length=8)
    assert "3 of 6 texts were truncated to max_length=8" in caplog.text
    assert max(len(r["input_ids"]) for r in bundle.train[0].dataset) == 8
    assert bundle.task_updates == {"sentiment": {"num_classes": 2, "label_names": ["neg", "pos"]}}


def test_missing_labels_dynamic_padding_and_pairs(tiny_encoder: str, tmp_path: Path) -> None:
    rows = [
        {"id": 0, "text": "a good movie", "other": "fun", "label": "pos", "score": 0.5, "topics": ["plot"]},
        {"id": 1, "text": "bad", "other": "it was boring and not fun", "label": None, "score": None, "topics": None},
    ]
    files = {s: write_jsonl(tmp_path / f"{s}.jsonl", rows) for s in ("train", "validation", "test")}
    source = {
        "path": "json",
        "data_files": files,
        "text_pair": "other",
        "labels": {
            "sentiment": {"column": "label", "names": ["neg", "pos"]},
            "score": {"column": "score", "kind": "regression"},
            "topics": {"column": "topics", "kind": "multilabel", "names": ["acting", "plot"]},
        },
    }
    bundle = text_data({"shared": source}, tokenizer=tiny_encoder)
    train = bundle.train[0]
    assert train.tasks == ["sentiment", "score", "topics"] and len(bundle.train) == 1
    assert train.dataset.labelled_counts() == {"sentiment": 1, "score": 1, "topics": 1}
    batch = train.collate_fn([train.dataset[0], train.dataset[1]])
    ids = batch["inputs"]["input_ids"]
    assert ids.shape[1] == len(train.dataset[1]["input_ids"])  # padded to the longest in the batch
    assert batch["inputs"]["token_type_ids"][1].max() == 1  # the pair's second text
    assert batch["sentiment"].tolist() == [1, -1]
    assert batch["score"][1].isnan() and batch["topics"][1].isnan().all()
    assert batch["topics"][0].tolist() == [0.0, 1.0]
    assert bundle.task_updates["topics"] == {"num_classes": 2, "label_names": ["acting", "plot"], "multi_label": True}


def test_one_file_source_gets_validation_and_test_carved_from_it(tiny_encoder: str, tmp_path: Path) -> None:
    """The docs' own ``data_files: t.jsonl`` (one file, no split names) used to fail with KeyError 'validation'."""
    rows = [{"id": f"r{i}", "text": f"film {i} was good", "label": "pos" if i % 2 else "neg"} for i in range(40)]
    source = {"path": "json", "data_files": write_jsonl(tmp_path / "t.jsonl", rows), "id": "id"}
    data = text_data({"reviews": {**source, "labels": {"sentiment": "label"}}}, tokenizer=tiny_encoder)
    sizes = [len(data.train[0]), len(data.val[0]), len(data.test[0])]
    assert sum(sizes) == 40 and all(n > 0 for n in sizes), sizes
