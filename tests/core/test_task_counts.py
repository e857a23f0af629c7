"""``Task.count_labelled`` (read on the CPU batch) equals the count ``masked_loss`` returns, for every task type."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from core.backbones import BACKBONES
from core.task import Task
from core.tasks import TASKS, build_task

NAN = float("nan")


def _vector(spec: dict[str, Any], target: Callable[[bool], Tensor]) -> Callable[[Path], Any]:
    """A task on an MLP over 4 features, 4 samples."""

    def make(_: Path) -> tuple[Task, Any, Callable[[bool], Any]]:
        backbone = BACKBONES.build({"name": "mlp", "in_dim": 4, "hidden": [8]})
        task = build_task("t", spec, backbone)
        return task, task.head(backbone(torch.randn(4, 4))), target

    return make


def _text(spec: dict[str, Any], target: Callable[[bool], Tensor]) -> Callable[[Path], Any]:
    """A task on a tiny BERT over 3 texts (token targets have the tokenized width, 7)."""

    def make(root: Path) -> tuple[Task, Any, Callable[[bool], Any]]:
        from nlp.encoder import HFEncoder
        from nlp.label_kinds import generation_updates
        from tests.nlp.conftest import make_encoder

        encoder = HFEncoder(str(make_encoder(root / "bert"))).eval()
        texts = ["alice went to paris !", "bob loves london", "the movie was great"]
        features = encoder(dict(encoder.tokenizer(texts, padding=True, return_tensors="pt")))
        full = {**generation_updates(encoder.tokenizer), **spec} if spec["type"] == "generation" else spec
        task = build_task("t", full, encoder)
        return task, task.head(features), target

    return make


def _detection(root: Path) -> tuple[Task, Any, Callable[[bool], Any]]:
    from tests.vision.helpers import TINY_BACKBONE
    from vision.backbone import TimmBackbone

    backbone = TimmBackbone(**{k: v for k, v in TINY_BACKBONE.items() if k != "name"})
    task = build_task("t", {"type": "detection", "num_classes": 3, "channels": 16, "groups": 4}, backbone)
    boxes = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 20.0]]), "labels": torch.tensor([1])}
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}  # labelled: no object

    def target(some: bool) -> list[Any]:
        return [None, boxes, empty] if some else [None, None, None]

    return task, task.head(backbone(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8))), target


def _tokens(some: bool) -> Tensor:
    """(3, 7) tag ids: -100 on positions without a word label; a row without any."""
    if not some:
        return torch.full((3, 7), -100)
    return torch.tensor([[-100, 0, 1, -100, 2, 0, -100], [-100] * 7, [-100, 1, 1, 0, -100, -100, -100]])


def _generation(some: bool) -> Tensor:
    """Target token ids [CLS] ... [SEP] padded with -100; a row of -100 has no target."""
    if not some:
        return torch.full((3, 5), -100)
    return torch.tensor([[2, 25, 26, 3, -100], [-100] * 5, [2, 27, 3, -100, -100]])


CASES: dict[str, Callable[[Path], Any]] = {
    "classification": _vector(
        {"type": "classification", "num_classes": 3},
        lambda some: torch.tensor([0, -1, 2, 1]) if some else torch.full((4,), -1),
    ),
    "binary": _vector(
        {"type": "binary"}, lambda some: torch.tensor([1.0, NAN, 0.0, NAN]) if some else torch.full((4,), NAN)
    ),
    "disease": _vector(
        {"type": "disease", "pos_weight": 2.0},
        lambda some: torch.tensor([NAN, 1.0, 0.0, 0.0]) if some else torch.full((4,), NAN),
    ),
    "multilabel": _vector(
        {"type": "multilabel", "num_labels": 3},
        lambda some: (
            torch.tensor([[1.0, NAN, 0.0], [NAN] * 3, [0.0, 0.0, 1.0], [NAN, 1.0, NAN]])
            if some
            else torch.full((4, 3), NAN)
        ),
    ),
    "regression": _vector(
        {"type": "regression"}, lambda some: torch.tensor([0.5, NAN, NAN, 2.0]) if some else torch.full((4,), NAN)
    ),
    "sequence_classification": _text(
        {"type": "sequence_classification", "num_classes": 2},
        lambda some: torch.tensor([1, -1, 0]) if some else torch.full((3,), -1),
    ),
    "pair_classification": _text(
        {"type": "pair_classification", "num_classes": 3},
        lambda some: torch.tensor([-1, 2, 0]) if some else torch.full((3,), -1),
    ),
    "sequence_regression": _text(
        {"type": "sequence_regression"}, lambda some: torch.tensor([NAN, 0.3, 1.0]) if some else torch.full((3,), NAN)
    ),
    "token_classification": _text({"type": "token_classification", "label_names": ["O", "B-x", "I-x"]}, _tokens),
    "generation": _text({"type": "generation"}, _generation),
    "detection": _detection,
}


def test_every_task_type_has_a_case() -> None:
    assert set(CASES) == set(TASKS.names()), "give every registered task type a case in CASES"


@pytest.mark.parametrize("type_name", TASKS.names())
def test_count_labelled_is_the_count_masked_loss_returns(type_name: str, tmp_path: Path) -> None:
    task, output, target = CASES[type_name](tmp_path)
    for some in (True, False):
        cpu_target = target(some)
        count = task.count_labelled(cpu_target)
        assert isinstance(count, int)
        assert count == int(task.masked_loss(output, cpu_target)[1])
        if some:
            assert count > 0
