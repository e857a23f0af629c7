"""Detection mAP under DDP: shards with different image counts gather once and score like one process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.core.helpers import spawn
from vision.metrics import DetectionMAP

IMAGES = 5  # 2 ranks: 3 vs 2 images, the uneven split that used to hang


def _images() -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(IMAGES):
        boxes = torch.rand(3, 2, generator=g) * 40
        gt = {"boxes": torch.cat([boxes, boxes + 10], 1), "labels": torch.randint(0, 2, (3,), generator=g)}
        noisy = gt["boxes"] + torch.randn(3, 4, generator=g) * 2
        pred = {"boxes": noisy, "scores": torch.rand(3, generator=g), "labels": gt["labels"]}
        out.append((pred, gt))
    return out


def _score(rank: int, world_size: int) -> float:
    metric = DetectionMAP("map")
    for pred, gt in _images()[rank::world_size]:
        metric.update([pred], [gt])
    return float(metric.compute())


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        Path(out, f"rank{rank}.json").write_text(json.dumps(_score(rank, world_size)))
    finally:
        dist.destroy_process_group()


def test_map_of_uneven_shards_equals_the_single_process_map(tmp_path):
    spawn(_worker, str(tmp_path))
    single = _score(0, 1)
    assert 0 < single < 1  # a real, non-trivial mAP
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)] == pytest.approx([single] * 2)
