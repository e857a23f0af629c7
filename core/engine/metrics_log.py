"""The metrics log: one JSON record per line (setup, train, val, resume), plus TensorBoard."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import CheckpointError
from ..io import atomic_write_text, make_dirs
from ..tree import flatten

if TYPE_CHECKING:
    from .rundir import RunDir


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a metrics log; a torn last line (a run killed mid-write) is ignored."""
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise CheckpointError(f"{path} line {i + 1} is not valid JSON: {e}") from e
    return records


class MetricsLog:
    def __init__(self, path: Path, tensorboard: Path | None = None) -> None:
        self.path = path
        self._writer: Any = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                pass
            else:
                self._writer = SummaryWriter(str(tensorboard))

    def append(self, record: dict[str, Any]) -> None:
        make_dirs(self.path.parent)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self._writer is not None:
            for k, v in flatten(record).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._writer.add_scalar(f"{record['split']}/{k}", v, record["step"])

    def truncate_after(self, step: int) -> int:
        """Drop the records of steps after ``step`` (written after the checkpoint a run resumes from),
        so the log holds one trajectory. Returns how many were dropped."""
        if not self.path.is_file():
            return 0
        records = read_jsonl(self.path)
        kept = [r for r in records if r.get("step", 0) <= step]
        if len(kept) != len(records):
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        return len(records) - len(kept)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


class RunLog:
    """The metrics log of rank 0 of a run with a directory; a no-op otherwise."""

    def __init__(self, run: RunDir | None) -> None:
        self._log = MetricsLog(run.metrics, run.path / "tb") if run is not None else None

    def __call__(self, record: dict[str, Any]) -> None:
        if self._log is not None:
            self._log.append(record)

    def truncate_after(self, step: int) -> int:
        return self._log.truncate_after(step) if self._log is not None else 0

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def host_record(record: dict[str, Any], *diagnosed: Any) -> dict[str, Any]:
    """A step record with its device values read back in one host sync (log steps only) and the
    ``diagnostics()`` of ``diagnosed`` (balancer, architecture) added. A task unlabelled all step
    (a NaN loss) is left out."""
    for part in diagnosed:
        record = {**record, **part.diagnostics()}
    keys = [k for k, v in record.items() if isinstance(v, torch.Tensor)]
    if keys:
        read = torch.stack([record[k].detach().double().reshape(()) for k in keys]).tolist()
        record = {**record, **dict(zip(keys, read, strict=True))}
    return {k: v for k, v in record.items() if not (k.startswith("loss/") and math.isnan(v))}


def setup_record(trainer: Any) -> dict[str, Any]:
    """The first record of a new run: what trains, on what, how."""
    return {
        "split": "setup",
        "step": 0,
        "tasks": list(trainer.model.tasks),
        "sampler": trainer.sampler.describe(),
        "balancer": repr(trainer.balancer),
        "world_size": trainer.env.world_size,
        "strategy": trainer.strategy.name,
        "device": str(trainer.env.device),
        "amp": str(trainer.precision.dtype),
        "config": dataclasses.asdict(trainer.config),
    }
