"""The metrics log: one JSON record per line (setup, train, val, resume), plus TensorBoard."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io import atomic_write_text, make_dirs
from ..tree import flatten
from .directory import RunDir


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
