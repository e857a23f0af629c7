"""``jointtrain predict MODEL texts.txt`` / ``model.predict(["a text", ...])``: labels per task and
entities with character spans.

Files: ``.txt`` (one text per line), ``.jsonl`` / ``.json`` (objects with ``text`` and an
optional ``text_pair``, or plain strings) or ``.csv`` (a ``text`` column). In Python: a string, a
list of strings, of ``(text, text_pair)`` pairs or of ``{"text", "text_pair"?}`` dicts, or a
``pathlib.Path`` to such a file (a ``str`` is always a text). The tokenizer is the one saved
inside the model directory, so prediction runs offline.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from core.data import Source
from core.errors import CheckpointError, DataError
from core.model import JointModel
from core.predict import LABELLED, PREDICTORS
from core.spec import from_dict

from .data import ROW, Collator, SourceSpec, TextDataset, encode_batch, parse_labels, row_numbers
from .encoder import HFEncoder
from .metrics import bio_spans
from .tasks import TokenClassificationTask

log = logging.getLogger(__name__)

# Word split for tagging raw text, close to the CoNLL tweets' tokens: URLs, @mentions and
# #hashtags stay whole, clitics ('s) and punctuation stand alone.
WORD = re.compile(r"https?://\S+|[@#]?\w+|'\w+|[^\w\s]")


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def read_texts(path: Path) -> list[dict[str, str]]:
    """Records with ``text`` (and maybe ``text_pair``); errors name the file and line."""
    if not path.is_file():
        raise DataError(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        rows: list[Any] = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)]
        rows = [(n, line) for n, line in rows if line.strip()]
    elif suffix == ".jsonl":
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
            if line.strip():
                try:
                    rows.append((n, json.loads(line)))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {n}: not valid JSON: {e}") from e
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON: {e}") from e
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of texts or of {{'text': ...}} objects")
        rows = list(enumerate(data))
    elif suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(n, row) for n, row in enumerate(csv.DictReader(f), 2)]
    else:
        raise DataError(f"{path}: unsupported input type '{suffix}'; use .txt, .jsonl, .json or .csv")
    records = []
    for where, row in rows:
        record = {"text": row} if isinstance(row, str) else row
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}, {'line' if suffix != '.json' else 'item'} {where}: empty or missing 'text'")
        records.append({k: record[k] for k in ("text", "text_pair") if record.get(k)})
    if not records:
        raise DataError(f"{path} holds no text")
    return records


def entities(text: str, words: list[tuple[str, int, int]], tags: list[str]) -> list[dict[str, Any]]:
    """Entity spans over words -> character spans into the original ``text``."""
    out = []
    for kind, first, end in bio_spans(tags):
        start, stop = words[first][1], words[end - 1][2]
        out.append({"type": kind, "start": start, "end": stop, "text": text[start:stop]})
    return out


def model_tokenizer(model: JointModel) -> PreTrainedTokenizerBase:
    """The tokenizer of a text model's encoder (saved in its model folder)."""
    backbone = model.backbone
    if not isinstance(backbone, HFEncoder):
        raise CheckpointError(
            f"text predictions need an 'hf_encoder' backbone, this model has {type(backbone).__name__}"
        )
    if backbone.tokenizer is None:
        raise CheckpointError("this model has no tokenizer: load it with JointModel.from_pretrained(model_dir)")
    return backbone.tokenizer


@torch.no_grad()
def predict_records(model: JointModel, records: list[dict[str, str]], batch_size: int = 32) -> list[dict[str, Any]]:
    """Per record: each sequence task's postprocessed output, each token task's entities."""
    tokenizer = model_tokenizer(model)
    max_length = int(model.extra.get("max_length", 128))
    token_tasks = [t for t, task in model.tasks.items() if isinstance(task, TokenClassificationTask)]
    sequence_tasks = [t for t in model.tasks if t not in token_tasks]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    results: list[dict[str, Any]] = []
    truncated = 0
    try:
        for start in range(0, len(records), batch_size):
            chunk = records[start : start + batch_size]
            rows: list[dict[str, Any]] = [{"id": start + i, **r} for i, r in enumerate(chunk)]
            if sequence_tasks:
                pairs = [r.get("text_pair") for r in chunk]
                enc = tokenizer(
                    [r["text"] for r in chunk],
                    pairs if any(pairs) else None,
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
                truncated += sum(bool(e.overflowing) for e in enc.encodings)
                outputs = model({k: v.to(device) for k, v in enc.items()}, sequence_tasks)
                for t in sequence_tasks:
                    for row, value in zip(rows, model.tasks[t].postprocess(outputs[t]), strict=True):
                        row[t] = value
            if token_tasks:
                words = [words_with_offsets(r["text"]) for r in chunk]
                enc = tokenizer(
                    [[w for w, _, _ in ws] for ws in words],
                    is_split_into_words=True,
                    truncation=True,
                    max_length=max_length,
                    padding=True,
                    return_tensors="pt",
                )
                truncated += sum(bool(e.overflowing) for e in enc.encodings) if not sequence_tasks else 0
                outputs = model({k: v.to(device) for k, v in enc.items()}, token_tasks)
                for t in token_tasks:
                    tag_rows = model.tasks[t].postprocess(outputs[t])
                    for i, row in enumerate(rows):
                        tags = ["O"] * len(words[i])  # words cut off by max_length stay untagged
                        previous = None
                        for position, word in enumerate(enc.word_ids(i)):
                            if word is not None and word != previous and word < len(tags):
                                tags[word] = tag_rows[i][position]
                            previous = word
                        row[t] = {"entities": entities(chunk[i]["text"], words[i], tags)}
            results.extend(rows)
    finally:
        model.train(was_training)
    if truncated:
        log.warning(
            "%d of %d texts were longer than max_length=%d and were truncated", truncated, len(records), max_length
        )
    return results


def text_records(inputs: Any) -> list[dict[str, str]]:
    """Python inputs (see the module docstring) as records; errors name the item."""
    if isinstance(inputs, Path):
        return read_texts(inputs)
    items = [inputs] if isinstance(inputs, (str, Mapping)) else inputs
    if not isinstance(items, Sequence) or not items:
        raise DataError(
            "a text model reads a string, a non-empty list of strings, of (text, text_pair) pairs or of "
            f"{{'text': ...}} dicts, or a pathlib.Path to a .txt/.jsonl/.json/.csv file; got {type(inputs).__name__}"
        )
    records = []
    for i, item in enumerate(items):
        if isinstance(item, (tuple, list)) and len(item) == 2:
            item = {"text": item[0], "text_pair": item[1]}
        record = {"text": item} if isinstance(item, str) else item
        if not isinstance(record, Mapping) or not all(
            isinstance(record.get(k, ""), str) for k in ("text", "text_pair")
        ):
            raise DataError(f"text input {i} is a {type(item).__name__}; give a string or a (text, text_pair) pair")
        if not record.get("text", "").strip():
            raise DataError(f"text input {i} is empty or has no 'text'")
        records.append({k: record[k] for k in ("text", "text_pair") if record.get(k)})
    return records


@PREDICTORS.register("text")
def predict_text(
    model: JointModel, inputs: Any, out_path: Path | None = None, batch_size: int = 32
) -> list[dict[str, Any]]:
    return predict_records(model, text_records(inputs), batch_size)


#: the ``datasets`` builder reading a labelled file, by suffix
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@LABELLED.register("text")
def labelled_texts(model: JointModel, path: str | Path) -> list[Source]:
    """A labelled file of the user's, read as the training source that labelled each task read its own
    (same text / tokens / label columns), tokenised by the model's tokenizer, labels by the model's names."""
    import datasets

    path = Path(path)
    builder = BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: give a labelled {', '.join(BUILDERS)} file")
    tokenizer = model_tokenizer(model)
    data = datasets.load_dataset(builder, data_files=str(path), split="train")
    row, first = row_numbers(builder, [str(path)])
    data = data.add_column(ROW, [row.format(first + i) for i in range(len(data))])  # errors name file rows
    sources, wanted = [], []
    for name, raw in (model.extra.get("data", {}).get("sources") or {}).items():
        spec: SourceSpec = from_dict(SourceSpec, raw, f"data.sources.{name}")
        labels = {t: lab for t, lab in parse_labels(name, spec.labels).items() if t in model.tasks}
        wanted += [f"'{lab.column}' (task '{t}')" for t, lab in labels.items()]
        labels = {t: lab for t, lab in labels.items() if lab.column in data.column_names}
        if not labels:
            continue
        info = {
            t: {"column": lab.column, "kind": lab.kind, "names": model.tasks[t].label_names, "class_label": False}
            for t, lab in labels.items()
        }
        absent = [c for c in (spec.tokens or spec.text, spec.text_pair) if c and c not in data.column_names]
        if absent:
            raise DataError(f"{path}: column(s) {absent} missing: the input of tasks {list(labels)}, as in training")
        ids = spec.id if spec.id in data.column_names else None  # errors name file rows without it
        columns = {"text": spec.text, "text_pair": spec.text_pair, "tokens": spec.tokens, "id": ids}
        kwargs = {"tokenizer": tokenizer, "max_length": int(model.extra.get("max_length", 128))}
        encoded = data.map(
            encode_batch,
            batched=True,
            remove_columns=data.column_names,
            fn_kwargs={**kwargs, "columns": columns, "labels": info, "where": str(path)},
        ).remove_columns("truncated")
        kinds = {t: lab.kind for t, lab in labels.items()}
        sources.append(Source(name, TextDataset(encoded, kinds), list(labels), Collator(tokenizer.pad_token_id, kinds)))
    if not sources:
        raise DataError(
            f"{path} has none of the label columns the model was trained with: {', '.join(wanted) or '(none recorded)'}"
        )
    return sources
