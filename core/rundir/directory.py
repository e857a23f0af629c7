"""The run directory: where a run's files live and the rules that keep them from being lost.

Layout (one place for every name)::

    config.yaml        the resolved config (CLI runs)
    metrics.jsonl      setup / train / val / resume records, one JSON object a line
    checkpoints/       last.pt (resume) and best-<step>.pt (the best N), see CheckpointManager
    best/  final/      self-contained model folders (JointModel.save_pretrained)
    results.json       results per model and split, updated key by key
    report.md plots/   the run report
    run.lock           who is writing (pid, host, start time)

Rules: one writer at a time (a lock held for the writer's life; a dead holder's lock is taken
over with a warning); results are merged, never replaced; a new run refuses a folder that holds
one; resuming refuses a config change that would alter the trajectory.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_json, atomic_write_text, make_dirs


class RunStatus(str, enum.Enum):
    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    INTERRUPTED = "interrupted"

    @property
    def finished(self) -> bool:
        return self is not RunStatus.INTERRUPTED


#: config keys that may change when a run is resumed: they do not alter the trajectory of the
#: weights (``train.max_steps`` only extends it); everything else must match the checkpoint
RESUMABLE_KEYS = (
    "output_dir",
    "train.max_steps",
    "train.eval_every",
    "train.log_every",
    "train.progress",
    "train.early_stopping_patience",
    "loading.num_workers",  # map-style batches do not depend on the workers; a sharded stream checks its own
    "loading.pin_memory",
    "report.",
)


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists and spec mappings below sections stay whole)."""
    flat: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not prefix:
            flat.update(flat_config(v, f"{key}."))
        else:
            flat[key] = v
    return flat


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(allowed changes ``key -> [old, new]``, refused keys) between two resolved configs."""
    old, new = flat_config(json.loads(json.dumps(saved))), flat_config(json.loads(json.dumps(current)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    allowed = {k: [old.get(k), new.get(k)] for k in changed if k.startswith(RESUMABLE_KEYS)}
    refused = [k for k in changed if k not in allowed]
    if "train.max_steps" in allowed and (new.get("train.max_steps") or 0) < (old.get("train.max_steps") or 0):
        allowed.pop("train.max_steps")
        refused.append("train.max_steps (can only be extended)")
    return allowed, refused


class RunDir:
    """One run's folder: its layout, its lock and its results."""

    #: locks this process holds: resolved path -> [fd, depth] (re-entrant across RunDir objects)
    _held: ClassVar[dict[Path, list[int]]] = {}

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # -- layout ------------------------------------------------------------------------------
    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.pt")
    results_file = property(lambda self: self.path / "results.json")
    report = property(lambda self: self.path / "report.md")
    plots = property(lambda self: self.path / "plots")
    lock_file = property(lambda self: self.path / "run.lock")

    def model(self, name: str) -> Path:
        """A model folder: ``best``, ``final`` or ``finetuned/<task>/final``."""
        return self.path / name

    def holds_run(self) -> bool:
        return any(p.exists() for p in (self.metrics, self.checkpoints, self.results_file, self.model("best")))

    # -- the writer's lock -------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[RunDir]:
        """Hold the run's lock for the block (re-entrant within one process)."""
        make_dirs(self.path)
        key = self.path.resolve()
        if key in self._held:
            self._held[key][1] += 1
            try:
                yield self
            finally:
                self._held[key][1] -= 1
            return
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            raise CheckpointError(
                f"{self.path} is in use by another process ({holder or 'unknown holder'}); wait for it to finish "
                "or choose another output_dir"
            ) from None
        previous = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if previous:  # the kernel released a dead process's flock; its note is still in the file
            warnings.warn(f"{self.path}: taking over the lock of a process that is gone ({previous})", stacklevel=3)
        info = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        self._held[key] = [fd, 1]
        try:
            yield self
        finally:
            del self._held[key]
            os.ftruncate(fd, 0)
            os.close(fd)

    # -- starting / resuming -----------------------------------------------------------------
    def check_new(self) -> None:
        if self.holds_run():
            raise ConfigError(
                f"{self.path} already holds a run; pass --resume to continue it (fit(resume=True) in Python) "
                "or choose another output_dir"
            )

    def check_resume(self, saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
        """Refuse a resume whose config would alter the trajectory; return the allowed changes."""
        allowed, refused = config_changes(saved, current)
        if refused:
            raise ConfigError(
                f"cannot resume {self.path}: the config differs from the checkpoint's in {', '.join(refused)}. "
                "Only these may change on resume: "
                f"{', '.join(k.rstrip('.') + ('*' if k.endswith('.') else '') for k in RESUMABLE_KEYS)}. "
                "Start a new run (another output_dir) to change the others."
            )
        return allowed

    # -- results -----------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        if not self.results_file.is_file():
            return {}
        try:
            return json.loads(self.results_file.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{self.results_file} is not valid JSON: {e}") from e

    def update_results(self, *path: str, value: Any) -> dict[str, Any]:
        """Set one key (``"models", "best", "test"``) of results.json, keeping every other section."""
        with self.writing():
            results = self.results()
            node = results
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
            atomic_write_json(self.results_file, results)
            return results

    def summary(self) -> dict[str, Any]:
        """The flat view of ``results.json`` that commands print and comparisons read: the best model's
        scores on the final split under ``tasks``, beside its validation and training-sample scores."""
        results = self.results()
        info = results.get("run", {})
        best = results.get("models", {}).get("best", {})
        return {
            **info,
            "tasks": best.get(info.get("split", "test"), {}),
            "val": best.get("val", {}),
            **({"train": best["train"]} if "train" in best else {}),
            **{k: v for k, v in results.items() if k not in ("run", "models")},
        }

    def write_config(self, text: str) -> None:
        with self.writing():
            atomic_write_text(self.config, text)


def refuse_artifact_path(out: str | Path) -> None:
    """Outputs never land inside a model or checkpoint folder (they would corrupt it)."""
    out = Path(out).resolve()
    for folder in [out, *out.parents]:
        if (folder / "model.safetensors").is_file() and (folder / "config.json").is_file():
            raise ConfigError(f"--out {out} is inside the model folder {folder}; write predictions elsewhere")
        if folder.name == "checkpoints" and (folder / "last.pt").is_file():
            raise ConfigError(f"--out {out} is inside the checkpoint folder {folder}; write predictions elsewhere")
