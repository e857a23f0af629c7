"""Streamed training sources without a length: sharded local files or Hugging Face streaming datasets.

A :class:`ShardedDataset` reads records shard by shard; it never indexes. Every epoch the shards
are shuffled with ``seed + epoch`` (the same order on every rank), rank ``r`` of ``W`` takes every
W-th shard and its DataLoader workers split the rank's shards again (worker ``g`` of ``G`` takes
every G-th), so no two workers of any rank read the same shard. Each worker batches its own
records (the last incomplete batch of a worker is dropped, as map-style epochs drop theirs). An
epoch in which no worker of a rank fills one batch raises a DataError naming the fix, where the
stream would otherwise start epoch after epoch without yielding.

The order of batches is fixed by construction, not by worker timing: the main process takes the
workers' batches in a round robin over the groups, skipping exhausted ones. The stream position is
(epoch, batches taken from each group, the next group in the round), which the trainer checkpoints;
a resumed stream re-reads each group's shards and skips what was taken, so it yields exactly the
batches an uninterrupted run would. Streams serve training only; validation and test stay map-style.

Ranks read different shards, so unlike map-style sources a W-rank run does not see the same
global batches as one process; each epoch every shard is read once by some rank.
"""

from __future__ import annotations

import glob
import itertools
import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from .data import DATASETS, DataBundle, DictDataset, Loading, Source
from .errors import ConfigError, DataError
from .sampling import stable_hash
from .task import label_mask


def as_tensors(record: dict[str, Any]) -> dict[str, Any]:
    """A JSON record's numbers and lists of numbers as tensors (ints int64, floats float32)."""
    out = {}
    for key, value in record.items():
        if value is None:
            raise DataError(
                f"record field '{key}' is null; write a missing label as -1 (class ids) or NaN (float labels)"
            )
        out[key] = torch.tensor(value, dtype=torch.float32 if _floating(value) else None)
    return out


def _floating(value: Any) -> bool:
    if isinstance(value, list):
        return any(_floating(v) for v in value)
    return isinstance(value, float)


class ShardedDataset:
    """Base: ``shards`` names them, ``read(i)`` yields shard i's records as tensor dicts.

    ``size``: samples per epoch for the samplers' epochs-as-steps (``len``); subclasses that can
    count cheaply do so when it is not given.
    """

    def __init__(self, size: int | None = None) -> None:
        self._size = size

    @property
    def shards(self) -> list[str]:
        raise NotImplementedError

    def read(self, shard: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def count(self) -> int:
        raise ConfigError(f"{type(self).__name__} cannot count its samples; give its size (samples per epoch)")

    def __len__(self) -> int:
        if self._size is None:
            self._size = self.count()
        return self._size

    def records(self) -> Iterator[dict[str, Any]]:
        return itertools.chain.from_iterable(self.read(i) for i in range(len(self.shards)))

    def training_sample(self, samples: int, seed: int) -> list[dict[str, Any]]:
        """At most ``samples`` records (-1 = all), from the shards in a seeded order, held in memory
        as an indexable dataset: the training sample the run's end scores for the train-val gap."""
        order = torch.randperm(len(self.shards), generator=torch.Generator().manual_seed(seed)).tolist()
        records = itertools.chain.from_iterable(self.read(i) for i in order)
        return list(records if samples < 0 else itertools.islice(records, samples))

    def labelled_counts(self) -> dict[str, int]:
        """Labelled records per label key: one pass over every shard (the trainer's task sizes)."""
        counts: dict[str, int] = {}
        for record in self.records():
            for key, value in record.items():
                counts[key] = counts.get(key, 0) + int(label_mask(value).any())
        return counts

    def open_stream(self, source: Source, loading: Loading, seed: int, rank: int, world_size: int) -> ShardStream:
        return ShardStream(source, loading, seed, rank, world_size)


class JsonlShards(ShardedDataset):
    """JSON Lines files, one shard each: one record (a JSON object) per line."""

    def __init__(self, paths: Sequence[str | Path], size: int | None = None) -> None:
        super().__init__(size)
        self.paths = sorted(str(p) for p in paths)
        if not self.paths:
            raise DataError("no JSONL shard files given (an empty glob?)")

    @property
    def shards(self) -> list[str]:
        return self.paths

    def read(self, shard: int) -> Iterator[dict[str, Any]]:
        with open(self.paths[shard], encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield as_tensors(json.loads(line))

    def count(self) -> int:
        total = 0
        for path in self.paths:
            with open(path, "rb") as f:
                total += sum(1 for line in f if line.strip())
        return total


class HuggingFaceShards(ShardedDataset):
    """A ``datasets.IterableDataset`` (``load_dataset(..., streaming=True)``): its shards are its
    own (``num_shards``, one per data file for file-backed builders)."""

    def __init__(self, dataset: Any, size: int | None = None) -> None:
        super().__init__(size)
        self.dataset = dataset

    @property
    def shards(self) -> list[str]:
        return [str(i) for i in range(self.dataset.num_shards)]

    def read(self, shard: int) -> Iterator[dict[str, Any]]:
        part = self.dataset.shard(num_shards=self.dataset.num_shards, index=shard)
        return (as_tensors(dict(record)) for record in part)


def _as_is(item: Any) -> Any:
    return item  # the workers batch (and tag) their own records


class _GroupReader(IterableDataset):
    """What one DataLoader worker reads in an epoch: its group's shards, batched, each batch tagged
    with the group, then an end marker. Persistent workers keep their own copy, so the epoch and
    the batches to skip travel in it and advance on each new iteration."""

    def __init__(
        self,
        data: ShardedDataset,
        plan: Callable[[int], list[list[int]]],
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        epoch: int,
        skip: list[int],
    ) -> None:
        self.data, self.plan, self.batch_size, self.collate = data, plan, batch_size, collate
        self.epoch, self.skip, self.started = epoch, skip, False

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        """``("batch", group, batch)`` items, then ``("end", group, records read)`` per group."""
        if self.started:  # the next epoch, from its start
            self.epoch, self.skip = self.epoch + 1, [0] * len(self.skip)
        self.started = True
        info = get_worker_info()
        groups = self.plan(self.epoch)
        for g in [info.id] if info is not None else range(len(groups)):
            records = itertools.chain.from_iterable(self.data.read(i) for i in groups[g])
            batches = iter(lambda records=records: list(itertools.islice(records, self.batch_size)), [])
            read = 0
            for index, batch in enumerate(batches):
                read += len(batch)
                if index >= self.skip[g] and len(batch) == self.batch_size:
                    yield "batch", g, self.collate(batch)
            yield "end", g, read


class ShardStream(Iterator[Any]):
    """An endless, seeded stream of this rank's batches of a sharded source (see the module doc)."""

    def __init__(self, source: Source, loading: Loading, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.source, self.loading = source, loading
        self.data: ShardedDataset = source.dataset  # type: ignore[assignment]
        self.seed, self.rank, self.world_size = seed + stable_hash(source.name), rank, world_size
        self.groups = max(1, loading.num_workers or 0)
        shards = len(self.data.shards)
        if shards < world_size:
            raise DataError(
                f"training source '{source.name}' has {shards} shard(s) for {world_size} ranks; write at least "
                f"one shard per rank (and per loader worker: {world_size * self.groups} here)"
            )
        if len(source) < loading.batch_size * world_size:
            raise DataError(f"training source '{source.name}' has fewer samples than one global batch")
        self.epoch, self.cursor, self.taken = 0, 0, [0] * self.groups
        self.loader: DataLoader | None = None
        self._reset_buffers()

    def __len__(self) -> int:
        """Nominal batches per epoch (from the source's size): what the samplers' epochs count."""
        return len(self.source) // (self.loading.batch_size * self.world_size)

    def plan(self, epoch: int) -> list[list[int]]:
        """Shard indices per group of this rank in ``epoch``."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        mine = torch.randperm(len(self.data.shards), generator=g).tolist()[self.rank :: self.world_size]
        return [mine[i :: self.groups] for i in range(self.groups)]

    def _reset_buffers(self) -> None:
        self.queues: list[deque[Any]] = [deque() for _ in range(self.groups)]
        self.ended = [False] * self.groups
        self.read = [0] * self.groups  # records each group read this epoch (for the error below)
        self._iterator: Iterator[Any] | None = None

    def _pull(self) -> bool:
        """Move one item from the loader into the group queues; False once the epoch is read."""
        if self._iterator is None:
            if self.loader is None:
                reader = _GroupReader(
                    self.data,
                    self.plan,
                    self.loading.batch_size,
                    self.source.collate_fn or default_collate,
                    self.epoch,
                    list(self.taken),
                )
                workers = self.loading.num_workers or 0
                self.loader = DataLoader(
                    reader,
                    batch_size=None,
                    num_workers=workers,
                    pin_memory=bool(self.loading.pin_memory),
                    persistent_workers=workers > 0,  # one reader per worker for the whole run
                    collate_fn=_as_is,
                )
            self._iterator = iter(self.loader)
        kind, group, batch = next(self._iterator, ("done", -1, None))
        if kind == "batch":
            self.queues[group].append(batch)
        elif kind == "end":
            self.ended[group], self.read[group] = True, batch
        return kind != "done"

    def __next__(self) -> Any:
        while True:
            g = self.cursor
            if self.queues[g]:
                self.taken[g] += 1
                self.cursor = self._following(g)
                return self.queues[g].popleft()
            if self.ended[g]:
                if all(self.ended) and not any(self.queues):  # the epoch is over: the next one
                    if not any(self.taken):  # else every epoch alike would start the next, forever
                        raise self._no_batch()
                    self.epoch, self.cursor, self.taken = self.epoch + 1, 0, [0] * self.groups
                    self._reset_buffers()
                    continue
                self.cursor = self._following(g)
                continue
            if not self._pull() and not all(self.ended):
                raise DataError(f"training source '{self.source.name}': the loader ended before its groups did")

    def _no_batch(self) -> DataError:
        sizes = [len(shards) for shards in self.plan(self.epoch)]
        workers = self.loading.num_workers or 0
        return DataError(
            f"training source '{self.source.name}': rank {self.rank} of {self.world_size} read no full batch "
            f"in epoch {self.epoch}. Its {sum(sizes)} of {len(self.data.shards)} shard(s) went to {self.groups} "
            f"loader worker(s) (loading.num_workers={workers}) as {sizes} shard(s) holding {self.read} record(s), "
            f"and each worker batches only its own records, {self.loading.batch_size} at a time, dropping an "
            f"incomplete last batch. Give every worker at least {self.loading.batch_size} records: lower "
            "loading.num_workers (0 reads all of a rank's shards in one process), lower loading.batch_size, "
            "or write fewer, larger shards"
        )

    def _following(self, g: int) -> int:
        """The next group in the round that may still have batches."""
        for step in range(1, self.groups + 1):
            h = (g + step) % self.groups
            if not (self.ended[h] and not self.queues[h]):
                return h
        return g

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "taken": list(self.taken), "groups": self.groups}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["groups"]) != self.groups:
            raise DataError(
                f"training source '{self.source.name}' was streamed by {state['groups']} loader worker(s); "
                f"resume it with loading.num_workers={state['groups'] if state['groups'] > 1 else 0}"
            )
        self.epoch, self.cursor, self.taken = int(state["epoch"]), int(state["cursor"]), list(state["taken"])
        self.loader = None  # its readers hold the old position: rebuilt from this one
        self._reset_buffers()


@DATASETS.register("jsonl_shards")
def jsonl_shards(
    train: str | list[str],
    tasks: list[str],
    val: str | list[str] | None = None,
    size: int | None = None,
    input_key: str = "inputs",
) -> DataBundle:
    """Training records streamed from JSONL shards (globs), validation read whole from JSONL files.

    A record is ``{input_key: [numbers], task: label, ...}``; a missing label is -1 (class ids) or
    NaN (float labels). ``size``: samples per epoch (counted by one pass over the shards if absent).
    """

    def files(patterns: str | list[str]) -> list[str]:
        found = sorted({f for p in ([patterns] if isinstance(patterns, str) else patterns) for f in glob.glob(p)})
        if not found:
            raise DataError(f"no file matches {patterns}")
        return found

    train_source = Source("train", JsonlShards(files(train), size), list(tasks), input_key=input_key)
    val_sources = []
    if val is not None:
        records = list(JsonlShards(files(val)).records())
        tensors = {k: torch.stack([r[k] for r in records]) for k in records[0]}
        val_sources = [Source("val", DictDataset(tensors, input_key), list(tasks), input_key=input_key)]
    return DataBundle(train=[train_source], val=val_sources)
