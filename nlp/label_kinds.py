"""Label kinds of text data: how a source's label column becomes a task's labels.

A source names each task's kind (``labels: {task: {column, kind}}``); the kind, looked up in
:data:`LABEL_KINDS`, knows the names the data implies, how a batch of cells is encoded, which
examples carry a label and how a batch of labels is padded. ``class``, ``multilabel`` and
``regression`` labels are those of core's task types of the same meaning, so their labelled
examples are counted by that task type; ``token`` tags sit on each word's first sub-token and
``generation`` targets are token ids of the encoder's own tokenizer.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from core.errors import ConfigError, DataError
from core.registry import Registry
from core.tasks import task_class

IGNORE = -100  # the position carries no label (padding, special and continuation sub-tokens)


def missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def label_name(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


@dataclass
class Batch:
    """What encoding one tokenised batch's labels needs besides the label cells."""

    tokenizer: Any
    encoding: Any  # the tokenizer's BatchEncoding of the batch's texts (word ids per example)
    texts: list[Any]  # the texts, or word lists of a ``tokens`` source
    columns: dict[str, Any]  # the source's text / text_pair / tokens / id columns
    fail: Callable[[int, str], DataError]  # the error naming example i (by id or file row)
    max_target_length: int


class LabelKind(ABC):
    """One kind of label column: read (``names``, ``task_updates``, ``encode``), counted and batched."""

    #: label names come from the data (given, a ClassLabel feature's, or the training split's values)
    named: bool = True
    #: the source must give word lists (``tokens``), not texts
    reads_words: bool = False

    def names(self, column: Sequence[Any]) -> list[str]:
        """Label names seen in the training column, sorted."""
        return sorted({label_name(v) for v in column if not missing(v)})

    def task_updates(self, names: list[str], tokenizer: Any) -> dict[str, Any]:
        """What the task's spec takes from the data (``names``: empty for a kind that is not named)."""
        return {"num_classes": len(names), "label_names": names}

    def train_updates(self, encoded: Sequence[Any], tokenizer: Any) -> dict[str, Any]:
        """What the task's spec takes from the encoded training split."""
        return {}

    @abstractmethod
    def encode(self, values: list[Any], info: dict[str, Any], task: str, batch: Batch) -> list[Any]:
        """One batch's label cells, encoded (``info``: the column, kind, names, ClassLabel or not)."""

    @abstractmethod
    def labelled_count(self, column: Sequence[Any]) -> int:
        """Encoded examples that carry a label."""

    @abstractmethod
    def collate(self, values: list[Any], length: int) -> Tensor:
        """One batch of encoded labels; ``length`` is the batch's padded input length."""


class CoreLabels(LabelKind):
    """A kind whose encoded labels are those of a core task type: that type counts the labelled ones."""

    task_type: str

    def labelled_count(self, column: Sequence[Any]) -> int:
        if not len(column):
            return 0
        return int(task_class(self.task_type).labelled_rows(np.asarray(column)).sum())

    def collate(self, values: list[Any], length: int) -> Tensor:
        return torch.tensor(values, dtype=torch.float32)


LABEL_KINDS: Registry[LabelKind] = Registry("text label kind")


def label_kind(name: str) -> LabelKind:
    return LABEL_KINDS.get(name)()


def _index(info: dict[str, Any]) -> dict[str, int]:
    return {n: j for j, n in enumerate(info["names"])}


def _list_names(column: Sequence[Any]) -> list[str]:
    return sorted({label_name(v) for value in column if not missing(value) for v in value})


@LABEL_KINDS.register("class")
class ClassKind(CoreLabels):
    """One name per text (or a ClassLabel id); -1 = unknown."""

    task_type = "classification"

    def encode(self, values: list[Any], info: dict[str, Any], task: str, batch: Batch) -> list[Any]:
        index, encoded = _index(info), []
        for i, value in enumerate(values):
            if missing(value) or (isinstance(value, int) and value < 0 and info["class_label"]):
                encoded.append(-1)
                continue
            name = info["names"][value] if info["class_label"] else label_name(value)
            if name not in index:
                raise batch.fail(i, f"task '{task}': label {value!r} is not in the label list {info['names']}")
            encoded.append(index[name])
        return encoded

    def collate(self, values: list[Any], length: int) -> Tensor:
        return torch.tensor(values, dtype=torch.long)


@LABEL_KINDS.register("multilabel")
class MultilabelKind(CoreLabels):
    """A list of names per text: a row of 0/1 over the label list (NaN where the cell is empty)."""

    task_type = "multilabel"

    def names(self, column: Sequence[Any]) -> list[str]:
        return _list_names(column)

    def task_updates(self, names: list[str], tokenizer: Any) -> dict[str, Any]:
        return {**super().task_updates(names, tokenizer), "multi_label": True}

    def encode(self, values: list[Any], info: dict[str, Any], task: str, batch: Batch) -> list[Any]:
        index, encoded = _index(info), []
        for i, value in enumerate(values):
            row = [float("nan")] * len(index) if missing(value) else [0.0] * len(index)
            for name in [] if missing(value) else value:
                if label_name(name) not in index:
                    raise batch.fail(i, f"task '{task}': label {name!r} is not in the label list {info['names']}")
                row[index[label_name(name)]] = 1.0
            encoded.append(row)
        return encoded


@LABEL_KINDS.register("regression")
class RegressionKind(CoreLabels):
    """A number per text; NaN = unknown."""

    task_type = "regression"
    named = False

    def task_updates(self, names: list[str], tokenizer: Any) -> dict[str, Any]:
        return {}

    def encode(self, values: list[Any], info: dict[str, Any], task: str, batch: Batch) -> list[Any]:
        encoded = []
        for i, value in enumerate(values):
            try:
                encoded.append(float("nan") if missing(value) else float(value))
            except (TypeError, ValueError):
                raise batch.fail(i, f"task '{task}': label {value!r} is not a number") from None
        return encoded


@LABEL_KINDS.register("token")
class TokenKind(LabelKind):
    """One tag per word of a ``tokens`` column, on the word's first sub-token; -100 elsewhere."""

    reads_words = True

    def names(self, column: Sequence[Any]) -> list[str]:
        names = _list_names(column)
        return ["O", *(n for n in names if n != "O")] if "O" in names else names

    def encode(self, values: list[Any], info: dict[str, Any], task: str, batch: Batch) -> list[Any]:
        index = _index(info)
        return [
            self._align(batch.encoding.word_ids(i), tags, index, batch, i, len(batch.texts[i]))
            for i, tags in enumerate(values)
        ]

    @staticmethod
    def _align(
        word_ids: list[int | None], tags: Any, index: dict[str, int], batch: Batch, i: int, n_words: int
    ) -> list[int]:
        """Each word's tag on its first sub-token; -100 elsewhere (an unlabelled sentence is all -100)."""
        if missing(tags):
            return [IGNORE] * len(word_ids)
        if len(tags) != n_words:
            raise batch.fail(i, f"{n_words} words in column '{batch.columns['tokens']}' but {len(tags)} tags")
        out, previous = [], None
        for word in word_ids:
            if word is None or word == previous:
                out.append(IGNORE)
            else:
                tag = label_name(tags[word])
                if tag not in index:
                    raise batch.fail(i, f"tag {tag!r} (word {word}) is not in the tag list {list(index)}")
                out.append(index[tag])
            previous = word
        return out

    def labelled_count(self, column: Sequence[Any]) -> int:
        return sum(any(t >= 0 for t in row) for row in column)

    def collate(self, values: list[Any], length: int) -> Tensor:
        return torch.tensor([v + [IGNORE] * (length - len(v)) for v in values], dtype=torch.long)


@LABEL_KINDS.register("generation")
class GenerationKind(LabelKind):
    """A target text, tokenised as ``[CLS] target [SEP]`` by the encoder's tokenizer; empty = unknown."""

    named = False

    def task_updates(self, names: list[str], tokenizer: Any) -> dict[str, Any]:
        return generation_updates(tokenizer)

    def train_updates(self, encoded: Sequence[Any], tokenizer: Any) -> dict[str, Any]:
        return {"vocab": target_vocab(tokenizer, encoded)}

    def encode(self, values: list[Any], info: dict[str, Any], task: str, batch: Batch) -> list[Any]:
        present = [i for i, v in enumerate(values) if not missing(v) and str(v).strip()]
        ids = batch.tokenizer([str(values[i]) for i in present], truncation=True, max_length=batch.max_target_length)
        encoded: list[Any] = [[] for _ in values]
        for i, row in zip(present, ids["input_ids"], strict=True):
            encoded[i] = row
        return encoded

    def labelled_count(self, column: Sequence[Any]) -> int:
        return sum(bool(row) for row in column)

    def collate(self, values: list[Any], length: int) -> Tensor:
        """Padded to its own longest target; a sample without a target is a row of -100."""
        width = max(1, *(len(v) for v in values))
        return torch.tensor([v + [IGNORE] * (width - len(v)) for v in values])


def generation_updates(tokenizer: Any) -> dict[str, Any]:
    """What a generation task takes from the tokenizer: its vocabulary and start / end / pad ids."""
    bos = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    eos = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if bos is None or eos is None or tokenizer.pad_token_id is None:
        raise ConfigError("generation tasks need a tokenizer with start ([CLS]/<s>), end ([SEP]/</s>) and pad tokens")
    return {
        "type": "generation",
        "vocab_size": len(tokenizer),
        "bos_token_id": int(bos),
        "eos_token_id": int(eos),
        "pad_token_id": int(tokenizer.pad_token_id),
        "unk_token_id": tokenizer.unk_token_id,
    }


def target_vocab(tokenizer: Any, targets: Iterable[list[int]]) -> list[int]:
    """The ids a decoder writes: those of the training targets and the special tokens (``[UNK]`` included)."""
    ids = {i for row in targets for i in row} | {i for i in tokenizer.all_special_ids if i is not None}
    return sorted(ids) if tokenizer.unk_token_id is not None else list(range(len(tokenizer)))
