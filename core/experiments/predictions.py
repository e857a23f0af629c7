"""Per-example test predictions of a finished run, saved once, rescored on any resample of the examples.

A run's best model is scored on the test split as its metrics are: the same sources, batches,
task outputs and targets that ``core.evaluation.evaluate`` feeds to torchmetrics. Keeping those
(on the CPU, ``predictions.pt`` in the run directory) lets a bootstrap recompute every metric of
the task on resampled examples without running the model again: a replicate is a count per
example, and each stored batch is re-indexed by those counts (``Task.select``: an example
drawn twice appears twice) before the task's own ``update_metrics``. Examples are identified by (source, position),
so two runs of the same data (one task alone, all tasks together) are paired example by example.
The file records which model made it (a digest of its config and weights): a run resumed to more steps,
or a merged baseline chosen again with other settings, has another best model, and its predictions are
made again instead of read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import Loading, Source, eval_loader, move
from ..model import CONFIG_NAME, WEIGHTS_NAME, JointModel
from ..rundir.directory import RunDir
from ..task import Task
from ..tree import tree_map

FILE = "predictions.pt"


@dataclass
class Batch:
    source: str
    start: int  # position of the batch's first example in its source
    size: int
    output: Any  # the task's decoded output for this batch (CPU, float32)
    target: Any


@dataclass
class TaskPredictions:
    """One task's test outputs and targets, batch by batch, and the task that scores them."""

    task: Task
    batches: list[Batch]

    def score(self, counts: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
        """Every metric of the task on the examples, each repeated ``counts[source][i]`` times
        (``None``: each once, the run's own test score)."""
        metrics = self.task.new_metrics()
        for b in self.batches:
            if counts is None:
                output, target = b.output, b.target
            else:
                index = torch.from_numpy(np.repeat(np.arange(b.size), counts[b.source][b.start : b.start + b.size]))
                if len(index) == 0:
                    continue
                output, target = self.task.select(b.output, b.target, index)
            self.task.update_metrics(metrics, output, target)
        return {name: float(m.compute()) for name, m in metrics.items()}


def _cpu_float(tree: Any) -> Any:
    return tree_map(lambda t: (t.float() if t.is_floating_point() else t).cpu(), tree)


@torch.no_grad()
def collect(model: JointModel, sources: Sequence[Source], loading: Loading) -> dict[str, list[Batch]]:
    """Per task of the model: its test batches (outputs and targets), in the order evaluation sees them."""
    device = next(model.parameters()).device
    out: dict[str, list[Batch]] = {t: [] for t in model.tasks}
    was_training = model.training
    model.eval()
    try:
        for source in sources:
            present = [t for t in source.tasks if t in model.tasks]
            if not present:
                continue
            start = 0
            for batch in eval_loader(source, loading):
                batch = move(batch, device)
                outputs = model.decode(model.encode(batch[source.input_key]), present)
                size = len(next(iter(batch.values())))
                for t in present:
                    target = batch[model.tasks[t].label_key]
                    out[t].append(Batch(source.name, start, size, _cpu_float(outputs[t]), _cpu_float(target)))
                start += size
    finally:
        model.train(was_training)
    return {t: v for t, v in out.items() if v}


def predictions(
    run_dir: Path, sources: Sequence[Source], loading: Loading, device: torch.device
) -> dict[str, TaskPredictions]:
    """The run's test predictions per task: read from ``predictions.pt``, or computed once from its
    best model and saved there (a rerun of the verdict reuses them)."""
    best = RunDir(run_dir).model("best")
    model = JointModel.from_pretrained(best, map_location=device)
    path, made_by = Path(run_dir) / FILE, digest(best)
    saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else {}
    if saved.get("model") == made_by:
        batches = {t: [Batch(**b) for b in v] for t, v in saved["tasks"].items()}
    else:
        batches = collect(model, [s for s in sources if set(s.tasks) & set(model.tasks)], loading)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": made_by, "tasks": {t: [vars(b) for b in v] for t, v in batches.items()}}, tmp)
        tmp.replace(path)  # atomic: a killed verdict never leaves a half-written file to reuse
    model.cpu()
    return {t: TaskPredictions(model.tasks[t], v) for t, v in batches.items()}


def digest(model_dir: Path) -> str:
    """SHA-256 of a saved model's config and weights: which model a predictions file belongs to."""
    sha = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        with open(Path(model_dir) / name, "rb") as f:
            while chunk := f.read(1 << 20):
                sha.update(chunk)
    return sha.hexdigest()


def example_counts(rows: Sequence[Mapping[str, TaskPredictions]]) -> dict[str, int]:
    """Examples per test source (the largest position seen, over every row's predictions)."""
    sizes: dict[str, int] = {}
    for row in rows:
        for preds in row.values():
            for b in preds.batches:
                sizes[b.source] = max(sizes.get(b.source, 0), b.start + b.size)
    return sizes
