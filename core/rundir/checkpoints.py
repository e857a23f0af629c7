"""The one owner of checkpoint policy, in the spirit of timm's ``CheckpointSaver``.

- ``last.pt``: the newest trainer state, for resuming; rewritten atomically at every save.
- ``best-<step>.pt``: the trainer states of the ``keep_best`` best validation scores (resumable:
  a run can be continued from its best point); the others are deleted as better ones arrive.
- ``best/``: the model of the best score as a self-contained folder (what evaluate / predict load);
  without a validation split, the final model; once calibrated, the calibrated model; its card
  rewritten once the run's scores are known.

A best checkpoint taken at the same step as ``last.pt`` is a hard link to it, so it costs no disk
until ``last.pt`` moves on. The list of kept checkpoints is part of the trainer state, so a
resumed run keeps managing the files of the run it continues.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..hub import write_card
from ..io import fsync_dir, save_state
from ..model import JointModel


class CheckpointManager:
    """``write=False`` (DDP ranks other than 0) keeps the same bookkeeping without touching files."""

    def __init__(self, directory: Path, best_model_dir: Path, keep_best: int = 1, write: bool = True) -> None:
        self.directory, self.best_model_dir, self.keep_best, self.write = directory, best_model_dir, keep_best, write
        self.best_score: float | None = None
        self.kept: list[tuple[float, int]] = []  # (score, step) of the kept best checkpoints, best first

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    def path(self, step: int) -> Path:
        return self.directory / f"best-{step}.pt"

    def save(
        self, step: int, state: Callable[[], dict[str, Any]], model: JointModel, score: float | None = None
    ) -> bool:
        """Write ``last.pt``; with a validation ``score``, keep it among the best N. True if it is the best."""
        improved = score is not None and (self.best_score is None or score > self.best_score)
        if improved:
            self.best_score = score
        kept = False
        if score is not None and self.keep_best > 0:
            self.kept = sorted([*self.kept, (score, step)], key=lambda b: (-b[0], b[1]))[: self.keep_best]
            kept = any(s == step for _, s in self.kept)
        if not self.write:
            return improved
        save_state(self.last, state())  # the state includes the bookkeeping updated above
        if kept:
            self._link(self.last, self.path(step))
        if improved:
            model.save_pretrained(self.best_model_dir)
        self.cleanup()
        return improved

    def save_best(self, model: JointModel) -> None:
        """Write ``model`` as ``best/`` outside a scored save: a run's final model when there is no
        validation split to choose by (the best known), or the best model once calibrated."""
        if self.write:
            model.save_pretrained(self.best_model_dir)

    def refresh_card(self) -> None:
        """Rewrite ``best/``'s model card: it lists the run's scores, measured after the folder was saved."""
        if self.write:
            write_card(self.best_model_dir)

    def _link(self, source: Path, target: Path) -> None:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        fsync_dir(self.directory)

    def cleanup(self) -> None:
        """Delete best checkpoints no longer among the best N (and leftovers of a run resumed earlier)."""
        keep = {self.path(step).name for _, step in self.kept}
        for file in self.directory.glob("best-*.pt"):
            if file.name not in keep:
                file.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "kept": [[score, step] for score, step in self.kept]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = state["best_score"]
        self.kept = [(float(score), int(step)) for score, step in state["kept"]]
