"""Text data from any Hugging Face ``datasets`` source, tokenised once (cached) and padded per batch.

A config's ``data.sources`` maps a source name to one dataset and the task labels it carries:
one source per task (combined by the samplers) or one source labelling several tasks (the
multi-labelled regime). Label kinds (``nlp.label_kinds``): ``class`` (one name per text),
``multilabel`` (a list of names), ``regression`` (a number), ``token`` (one tag per word of a
``tokens`` column), ``generation`` (a target text, tokenised with the same tokenizer, for a decoder).
Missing labels (null / empty) are normal and masked.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
from torch import Tensor
from torch.utils.data import Dataset

from core.data import DATASETS, DataBundle, Source
from core.errors import ConfigError, DataError
from core.registry import suggest
from core.spec import from_dict
from core.tabular.read import check_json_lines

from .encoder import MINILM, load_tokenizer
from .label_kinds import LABEL_KINDS, Batch, label_kind

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")
#: the column of each example's name as its file shows it (``line 5``), added before any split is
#: carved so that messages name the row in the file, not a position after shuffling
ROW = "__file_row__"


def label_column(task: str) -> str:
    """Where a task's encoded labels are stored: never under a file column's name, since a task may be
    named after its label column (``language: language``) and the tokenised set drops the file's columns."""
    return f"label:{task}"


@dataclass
class LabelSpec:
    column: str
    kind: str = "class"  # nlp.label_kinds: class | multilabel | regression | token | generation
    names: list[str] | None = None  # label (or tag) names; default: sorted values of the train split


@dataclass
class SourceSpec:
    """One dataset: a hub name or a builder (csv, json, parquet) with local ``data_files``."""

    path: str
    labels: dict[str, Any]  # task -> column name, or a LabelSpec mapping
    name: str | None = None  # the dataset's configuration name
    data_files: Any = None  # str, list, or {split: files}
    splits: dict[str, str] = field(default_factory=dict)  # our split -> the dataset's split name
    text: str = "text"
    text_pair: str | None = None  # second text field: sentence-pair tasks
    tokens: str | None = None  # a column of word lists (needed by token tasks, replaces ``text``)
    id: str | None = None  # column naming each example in error messages (default: row index)


def parse_labels(source: str, raw: dict[str, Any]) -> dict[str, LabelSpec]:
    labels = {}
    for task, spec in raw.items():
        label = from_dict(LabelSpec, {"column": spec} if isinstance(spec, str) else spec, f"{source}.labels.{task}")
        if label.kind not in LABEL_KINDS:
            raise ConfigError(
                f"{source}.labels.{task}: kind must be one of {', '.join(LABEL_KINDS.names())}, got '{label.kind}'"
            )
        labels[task] = label
    if not labels:
        raise ConfigError(f"data source '{source}' labels no task")
    return labels


def encode_batch(
    batch: dict[str, list[Any]],
    tokenizer: Any,
    max_length: int,
    columns: dict[str, Any],
    labels: dict[str, dict[str, Any]],
    where: str,
    max_target_length: int = 64,
) -> dict[str, list[Any]]:
    """Tokenise texts (or word lists) and encode labels; word tags go on first sub-tokens. Examples are
    named in messages by the ``id`` column, else by their row in the file (the :data:`ROW` column)."""
    names = [f"example {v!r}" for v in batch[columns["id"]]] if columns["id"] else batch[ROW]

    def fail(i: int, problem: str) -> DataError:
        return DataError(f"{where}, {names[i]}: {problem}")

    if columns["tokens"]:
        texts = batch[columns["tokens"]]
        for i, words in enumerate(texts):
            if not words or not any(str(w).strip() for w in words):
                raise fail(i, f"empty word list in column '{columns['tokens']}'")
        enc = tokenizer(
            [list(map(str, w)) for w in texts], is_split_into_words=True, truncation=True, max_length=max_length
        )
    else:
        texts = batch[columns["text"]]
        pairs = batch[columns["text_pair"]] if columns["text_pair"] else None
        for i, text in enumerate(texts):
            if text is None or not str(text).strip():
                raise fail(i, f"empty text in column '{columns['text']}'; drop the example or fill it in")
            if pairs is not None and (pairs[i] is None or not str(pairs[i]).strip()):
                raise fail(i, f"empty text in column '{columns['text_pair']}'")
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    out: dict[str, list[Any]] = {k: enc[k] for k in INPUT_KEYS if k in enc}
    out["truncated"] = [bool(e.overflowing) for e in enc.encodings]
    context = Batch(tokenizer, enc, texts, columns, fail, max_target_length)
    for task, info in labels.items():
        out[label_column(task)] = label_kind(info["kind"]).encode(batch[info["column"]], info, task, context)
    return out


class TextDataset(Dataset):
    """Tokenised examples of one source and split; labels are stored under the task names."""

    def __init__(self, data: datasets.Dataset, kinds: dict[str, str]) -> None:
        self.data, self.kinds = data, kinds

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.data[int(index)]

    def labelled_counts(self) -> dict[str, int]:
        return {
            task: label_kind(kind).labelled_count(self.data[label_column(task)]) for task, kind in self.kinds.items()
        }


class Collator:
    """Dynamic padding: each batch is padded to its own longest example."""

    def __init__(self, pad_id: int, kinds: dict[str, str]) -> None:
        self.pad_id, self.kinds = pad_id, kinds

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        length = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value: int) -> Tensor:
            return torch.tensor([r[key] + [value] * (length - len(r[key])) for r in rows], dtype=torch.long)

        pads = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": 0}
        batch: dict[str, Any] = {"inputs": {k: pad(k, v) for k, v in pads.items() if k in rows[0]}}
        for task, kind in self.kinds.items():
            batch[task] = label_kind(kind).collate([r[label_column(task)] for r in rows], length)
        return batch


def load_splits(
    name: str, spec: SourceSpec, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, datasets.Dataset]:
    """The source's train/validation/test splits, each example carrying its file row (:data:`ROW`).

    A source that gives only train has validation and test carved from it (seeded). One that gives
    validation is used as given: no test is carved from its train (that would shrink it behind the
    user's back); a warning says its tasks go untested. One that gives test but no validation has
    validation carved from train, with a warning.
    """
    _check_files(name, spec)
    try:
        loaded = datasets.load_dataset(spec.path, spec.name, data_files=spec.data_files)
    except FileNotFoundError as e:
        raise DataError(f"data source '{name}': {e}") from e
    except (ValueError, ConnectionError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        raise DataError(f"data source '{name}': cannot load '{spec.path}' (offline or unknown?): {e}") from e
    names = {s: spec.splits.get(s, s) for s in SPLITS}
    if names["train"] not in loaded:
        raise DataError(f"data source '{name}' has no split '{names['train']}'; it has {list(loaded)}")
    row, first = _row_numbers(spec)
    out = {
        s: loaded[names[s]].add_column(ROW, [row.format(first + i) for i in range(len(loaded[names[s]]))])
        for s in SPLITS
        if names[s] in loaded
    }
    if "validation" in out and "test" not in out:
        warnings.warn(
            f"data source '{name}' gives validation but no test split: its tasks are not tested (no test "
            f"split is carved from train); add a test file (data_files: {{test: ...}}) to get test results",
            stacklevel=3,
        )
    elif "test" not in out and test_fraction > 0:
        parts = out["train"].train_test_split(test_size=test_fraction, seed=seed)
        out["train"], out["test"] = parts["train"], parts["test"]
    if "validation" not in out and val_fraction > 0:
        if names["test"] in loaded:
            warnings.warn(
                f"data source '{name}' gives test but no validation split: {val_fraction:.0%} of its train "
                "split is held out for validation (val_fraction); add a validation file to use all of train",
                stacklevel=3,
            )
        parts = out["train"].train_test_split(test_size=val_fraction, seed=seed + 1)
        out["train"], out["validation"] = parts["train"], parts["test"]  # train_test_split names it "test"
    return out


def _files(spec: SourceSpec) -> list[str]:
    files = spec.data_files
    if files is None:
        return []
    if isinstance(files, str):
        return [files]
    if isinstance(files, dict):
        return [f for v in files.values() for f in ([v] if isinstance(v, str) else v)]
    return list(files)


def _row_numbers(spec: SourceSpec) -> tuple[str, int]:
    """How the source's files number their rows (:func:`row_numbers`). Several files in one split are
    numbered on from one to the next (name one file per split to avoid it)."""
    return row_numbers(spec.path, _files(spec))


def row_numbers(builder: str, files: Sequence[str]) -> tuple[str, int]:
    """How files read by a ``datasets`` builder number their rows: a message's ``row`` format and the
    first data row's number."""
    if builder == "csv":
        return "row {} (header = row 1)", 2
    if builder == "json" and files and all(_is_json_lines(f) for f in files):
        return "line {}", 1
    return "example {} (the first is 0)", 0


def _is_json_lines(file: str) -> bool:
    return Path(file).suffix.lower() in (".jsonl", ".ndjson")


def _check_files(name: str, spec: SourceSpec) -> None:
    """A JSON-lines file with a broken line fails here naming file and line (the loader names neither)."""
    for file in _files(spec):
        if _is_json_lines(file) and Path(file).is_file():
            try:
                check_json_lines(Path(file))
            except DataError as e:
                raise DataError(f"data source '{name}': {e}") from None


def _check_columns(name: str, split: str, data: datasets.Dataset, columns: dict[str, str | None]) -> None:
    """Every column the source names (text, text pair, tokens, id) is in the split, or the error
    lists the split's columns and the close one."""
    for key, column in columns.items():
        if column is not None and column not in data.column_names:
            have = [c for c in data.column_names if c != ROW]
            raise DataError(
                f"data source '{name}' split '{split}': the {key} column '{column}' is not in the data; it has "
                f"{have}.{suggest(column, have)} Set '{key}' to the column holding it"
            )


@DATASETS.register("text")
def text_data(
    sources: dict[str, dict[str, Any]],
    tokenizer: str = MINILM,
    max_length: int = 128,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_train_samples: int = 0,
    max_target_length: int = 64,
) -> DataBundle:
    """Your own text data: ``sources: {name: {path, data_files, text, labels: {task: column}}}``.

    ``tokenizer`` must be the encoder's (name or directory); ``max_length`` truncates (counted in
    the log), ``max_target_length`` truncates generation targets; ``max_train_samples`` caps each
    training split (0 = all) for quick runs. Label names found in the data, and for generation
    tasks the tokenizer's size, special ids and the target vocabulary (the ids of the training
    targets), go to the tasks through ``task_updates``. A source's missing validation / test split is
    carved from its train only as :func:`load_splits` says (never silently beside a given validation).
    """
    if not sources:
        raise ConfigError("data.sources is empty: give at least one dataset and the task labels it carries")
    tok = load_tokenizer(tokenizer)
    splits: dict[str, list[Source]] = {s: [] for s in SPLITS}
    task_updates: dict[str, dict[str, Any]] = {}
    for source_name, raw in sources.items():
        spec: SourceSpec = from_dict(SourceSpec, raw, f"data.sources.{source_name}")
        labels = parse_labels(source_name, spec.labels)
        kinds = {t: label_kind(lab.kind) for t, lab in labels.items()}
        if any(kind.reads_words for kind in kinds.values()) and not spec.tokens:
            raise ConfigError(f"data source '{source_name}' has a token task: set 'tokens' to its word-list column")
        parts = load_splits(source_name, spec, val_fraction, test_fraction, seed)
        if max_train_samples and len(parts["train"]) > max_train_samples:
            parts["train"] = parts["train"].shuffle(seed=seed).select(range(max_train_samples))
        label_info = {}
        for task, lab in labels.items():
            if task in task_updates:
                raise ConfigError(f"task '{task}' is labelled by two sources; give each task one source")
            feature = parts["train"].features.get(lab.column)
            if feature is None:
                have = [c for c in parts["train"].column_names if c != ROW]
                raise DataError(
                    f"data source '{source_name}' has no column '{lab.column}' (the label of task '{task}'); it "
                    f"has {have}.{suggest(lab.column, have)}"
                )
            kind = kinds[task]
            class_label = isinstance(feature, datasets.ClassLabel)
            names: list[str] = []
            if kind.named:
                names = lab.names or (feature.names if class_label else kind.names(parts["train"][lab.column]))
            label_info[task] = {"column": lab.column, "kind": lab.kind, "names": names, "class_label": class_label}
            task_updates[task] = kind.task_updates(names, tok)
        columns = {"text": spec.text, "text_pair": spec.text_pair, "tokens": spec.tokens, "id": spec.id}
        kind_names = {t: lab.kind for t, lab in labels.items()}
        for split, data in parts.items():
            where = f"data source '{source_name}' split '{split}'"
            _check_columns(source_name, split, data, {**columns, "text": None if spec.tokens else spec.text})
            encoded = data.map(
                encode_batch,
                batched=True,
                remove_columns=data.column_names,
                fn_kwargs={
                    "tokenizer": tok,
                    "max_length": max_length,
                    "columns": columns,
                    "labels": label_info,
                    "where": where,
                    "max_target_length": max_target_length,
                },
                desc=f"tokenising {source_name}/{split}",
            )
            truncated = sum(encoded["truncated"])
            if truncated:
                log.warning(
                    "%s: %d of %d texts were truncated to max_length=%d", where, truncated, len(encoded), max_length
                )
            encoded = encoded.remove_columns("truncated")
            if split == "train":
                for task, kind in kinds.items():
                    task_updates[task].update(kind.train_updates(encoded[label_column(task)], tok))
            dataset, collate = TextDataset(encoded, kind_names), Collator(tok.pad_token_id, kind_names)
            splits[split].append(Source(source_name, dataset, list(labels), collate))
    return DataBundle(
        train=splits["train"],
        val=splits["validation"],
        test=splits["test"],
        extra={"predictor": "text", "max_length": max_length},
        task_updates=task_updates,
        backbone_updates={"tokenizer": tokenizer},
    )
