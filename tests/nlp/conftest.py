"""Tiny BERT encoders built locally (a 60-word vocabulary, 2 layers of width 32): no download."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = (
    "the a movie film plot is was great good bad awful boring fun and but not very it this of in "
    "paris london alice bob went to visit loves hates play ##ing ##ed ##s book read ! . , ? @ # : / http"
).split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def make_encoder(directory: Path, extra_words: tuple[str, ...] = (), seed: int = 0) -> Path:
    """Save a randomly initialised tiny BERT and its WordPiece tokenizer into ``directory``."""
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {token: i for i, token in enumerate([*SPECIAL, *WORDS, *extra_words])}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(str(directory))
    tokenizer.save_pretrained(str(directory))
    return directory


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(make_encoder(tmp_path_factory.mktemp("tiny_bert")))


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
