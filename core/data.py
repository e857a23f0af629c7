"""Data sources and their rank-aware, resumable batch streams.

A :class:`Source` is one dataset and the tasks it labels. Samples are dicts: the backbone input
under ``input_key`` and each task's label under the task's ``label_key``.

Sharding keeps DDP equivalent to one process: global batch i is ``perm[i*B*W:(i+1)*B*W]`` of a
seeded per-epoch permutation and rank r takes every W-th element of it, so W ranks with batch
B see exactly the samples one process sees with batch B*W.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .errors import ConfigError, DataError
from .registry import Registry
from .sampling import stable_hash
from .task import label_mask
from .tree import tree_map

#: dataset factories: ``(**kwargs) -> DataBundle``
DATASETS: Registry[DataBundle] = Registry("dataset", builtins=("core.digits", "core.tabular", "core.streams"))


@runtime_checkable
class LabelCounting(Protocol):
    """Optional for any dataset: its labelled examples per label key, counted without reading every
    sample (which :func:`count_labelled` does otherwise)."""

    def labelled_counts(self) -> dict[str, int]: ...


@runtime_checkable
class StreamingDataset(Protocol):
    """A training dataset read as a stream, never indexed (``core.streams.ShardedDataset``): it opens
    this rank's resumable stream of training batches, and draws a seeded sample of ``samples``
    records (-1 = all) where a run re-scores training data; evaluation refuses it."""

    def open_stream(self, source: Source, loading: Loading, seed: int, rank: int, world_size: int) -> Iterator[Any]: ...

    def training_sample(self, samples: int, seed: int) -> list[dict[str, Any]]: ...


@dataclass
class Source:
    """One dataset and the tasks whose labels it carries.

    The dataset is map-style (``__len__`` + ``__getitem__``), or a :class:`StreamingDataset` for
    training; either may be :class:`LabelCounting`."""

    name: str
    dataset: Dataset
    tasks: list[str]
    collate_fn: Callable[[list[Any]], Any] | None = None
    input_key: str = "inputs"
    #: evaluation loaders kept across evaluations (``eval_loader``); not an ``__init__`` field, so a
    #: ``dataclasses.replace`` copy (another dataset or collate) starts without them
    eval_loaders: dict[tuple[Any, ...], DataLoader] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        twice = sorted({t for t in self.tasks if self.tasks.count(t) > 1})
        if twice:
            raise ConfigError(f"source '{self.name}' lists task(s) {twice} more than once; list each task once")

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]


@dataclass
class DataBundle:
    """Train/validation/test sources and what the model must remember about the data."""

    train: list[Source]
    val: list[Source]
    test: list[Source] = field(default_factory=list)
    #: task -> labelled training examples (for size-based weights and samplers); computed if absent
    task_sizes: dict[str, int] = field(default_factory=dict)
    #: JSON-able preprocessing / label metadata saved inside the model directory
    extra: dict[str, Any] = field(default_factory=dict)
    #: what the data knows that the model config must agree with, merged into the specs
    #: before the model is built (e.g. label names per task, input columns for the backbone)
    task_updates: dict[str, dict[str, Any]] = field(default_factory=dict)
    backbone_updates: dict[str, Any] = field(default_factory=dict)


@dataclass
class Loading:
    """DataLoader settings shared by all sources."""

    batch_size: int = 32
    eval_batch_size: int = 0  # 0 = 2 * batch_size
    num_workers: int | None = None  # None: CUDA_WORKERS on a CUDA device (at most the CPU count), else 0
    pin_memory: bool | None = None  # None: pinned on a CUDA device (faster, asynchronous copies)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"loading.batch_size must be >= 1, got {self.batch_size}")
        for key in ("eval_batch_size", "num_workers"):
            if (getattr(self, key) or 0) < 0:
                raise ConfigError(f"loading.{key} must be >= 0, got {getattr(self, key)}")

    def resolved(self, device: torch.device) -> Loading:
        """The settings with the ``None`` defaults chosen for ``device`` (the trainer's, ``auto`` resolved)."""
        cuda = device.type == "cuda"
        workers = self.num_workers if self.num_workers is not None else min(CUDA_WORKERS, os.cpu_count() or 1) * cuda
        pin = self.pin_memory if self.pin_memory is not None else cuda
        return dataclasses.replace(self, num_workers=workers, pin_memory=pin)


#: loader workers per source on CUDA when ``loading.num_workers`` is not given
CUDA_WORKERS = 4


class EpochBatches(Sampler[list[int]]):
    """The stream's batches from its current (epoch, offset), read afresh each time the loader is
    iterated: one DataLoader (and its persistent workers) serves every epoch."""

    def __init__(self, stream: SourceStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.stream.epoch_batches(self.stream.epoch)[self.stream.offset :])

    def __len__(self) -> int:
        return len(self.stream) - self.stream.offset


class SourceStream(Iterator[Any]):
    """An endless, seeded stream of this rank's training batches of one source.

    Its state is (epoch, batches consumed this epoch); restoring it resumes mid-epoch on the
    exact batch where the run stopped.
    """

    def __init__(self, source: Source, loading: Loading, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.source, self.loading = source, loading
        self.seed = seed + stable_hash(source.name)
        self.rank, self.world_size = rank, world_size
        self.global_batch = loading.batch_size * world_size
        if len(source) == 0:
            raise DataError(f"training source '{source.name}' is empty")
        if len(source) < self.global_batch:
            raise DataError(
                f"training source '{source.name}' has {len(source)} samples, fewer than one global batch "
                f"({loading.batch_size} x {world_size} ranks); lower batch_size"
            )
        self.epoch, self.offset = 0, 0
        self.loader: DataLoader | None = None  # built once, kept across epochs and resumes
        self._iterator: Iterator[Any] | None = None

    def __len__(self) -> int:
        return len(self.source) // self.global_batch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        perm = torch.randperm(len(self.source), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        b, w = self.loading.batch_size, self.world_size
        return [perm[i * b * w : (i + 1) * b * w][self.rank :: w] for i in range(len(self))]

    def __next__(self) -> Any:
        if self._iterator is None:
            if self.loader is None:
                # A private generator keeps the DataLoader from drawing on the global RNG, whose
                # state must only depend on the step for exact resume.
                self.loader = make_loader(self.source, self.loading, EpochBatches(self), torch.Generator())
            self.loader.generator.manual_seed(self.seed + self.epoch)  # worker seeds: a function of the epoch
            self._iterator = iter(self.loader)
        try:
            batch = next(self._iterator)
        except StopIteration:
            self.epoch, self.offset, self._iterator = self.epoch + 1, 0, None
            return next(self)
        self.offset += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset, self._iterator = int(state["epoch"]), int(state["offset"]), None


def open_stream(source: Source, loading: Loading, seed: int, rank: int = 0, world_size: int = 1) -> Iterator[Any]:
    """The source's training stream: a :class:`StreamingDataset`'s own (a sharded stream, see
    ``core.streams``) or a :class:`SourceStream` over a map-style dataset."""
    if isinstance(source.dataset, StreamingDataset):
        return source.dataset.open_stream(source, loading, seed, rank, world_size)
    return SourceStream(source, loading, seed, rank, world_size)


def move(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    return tree_map(lambda t: t.to(device, non_blocking=True), batch)


def make_loader(
    source: Source,
    loading: Loading,
    batches: Iterable[list[int]],
    generator: torch.Generator | None = None,
) -> DataLoader:
    workers = loading.num_workers or 0
    return DataLoader(
        source.dataset,
        batch_sampler=batches,
        collate_fn=source.collate_fn,
        generator=generator,
        num_workers=workers,
        pin_memory=bool(loading.pin_memory),
        persistent_workers=workers > 0,  # no respawn per epoch or evaluation
    )


def eval_loader(source: Source, loading: Loading, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Sequential batches of this rank's strided shard (no padding, so no sample counts twice).

    Kept on the source per (settings, rank): every evaluation reuses the loader and its workers."""
    if isinstance(source.dataset, StreamingDataset):
        raise DataError(
            f"source '{source.name}' is a stream; evaluation reads indexable sources: give validation and "
            "test data as files read whole (a stream's own sample: its dataset's training_sample())"
        )
    size = loading.eval_batch_size or 2 * loading.batch_size
    key = (size, loading.num_workers, loading.pin_memory, rank, world_size)
    if key not in source.eval_loaders:
        indices = list(range(rank, len(source), world_size))
        batches = [indices[i : i + size] for i in range(0, len(indices), size)]
        source.eval_loaders[key] = make_loader(source, loading, batches, torch.Generator().manual_seed(0))
    return source.eval_loaders[key]


def count_labelled(source: Source, label_keys: dict[str, str]) -> dict[str, int]:
    """Labelled examples per task in a source: a :class:`LabelCounting` dataset's own count, else
    read from every sample once."""
    if isinstance(source.dataset, LabelCounting):
        by_key = source.dataset.labelled_counts()
        return {t: int(by_key.get(label_keys[t], 0)) for t in source.tasks}
    counts = dict.fromkeys(source.tasks, 0)
    for i in range(len(source)):
        sample = source.dataset[i]
        for t in source.tasks:
            label = sample.get(label_keys[t])
            if label is None:
                continue
            counts[t] += int(label_mask(torch.as_tensor(label)).any())
    return counts


def check_sources(data: DataBundle, tasks: list[str]) -> None:
    """Every source labels known tasks, and every task has a training source."""
    if not data.train:
        raise DataError("no training sources")
    unknown = {t for s in [*data.train, *data.val] for t in s.tasks} - set(tasks)
    if unknown:
        raise DataError(f"data sources label tasks {sorted(unknown)} that the model does not have")
    untrained = set(tasks) - {t for s in data.train for t in s.tasks}
    if untrained:
        raise DataError(f"tasks {sorted(untrained)} have no training source")
    unvalidated = [t for t in tasks if not any(t in s.tasks for s in data.val)]
    if unvalidated:
        warnings.warn(
            f"tasks {unvalidated} have no validation labels: they are left out of model selection and early "
            "stopping; give them validation data (rows labelled for them in the validation split)",
            stacklevel=2,
        )


def labelled_sizes(data: DataBundle, label_keys: dict[str, str]) -> dict[str, int]:
    """Labelled training examples per task, over all training sources; every task needs one."""
    sizes = dict.fromkeys(label_keys, 0)
    for source in data.train:
        for t, n in count_labelled(source, label_keys).items():
            sizes[t] += n
    empty = [t for t, n in sizes.items() if n == 0]
    if empty:
        raise DataError(f"tasks {empty} have no labelled sample in the training split")
    return sizes


class DictDataset(Dataset):
    """Samples from a dict of equal-length tensors: ``{"inputs": X, "task_a": y_a, ...}``.

    Labels may be NaN (unknown); the input under ``input_key`` must be finite, or the first loss is
    NaN and the run stops blaming the learning rate: non-finite inputs are refused here, with their
    columns and rows."""

    def __init__(self, tensors: dict[str, torch.Tensor], input_key: str = "inputs") -> None:
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise DataError(f"all tensors need the same length, got {lengths}")
        if input_key in tensors:
            check_finite(tensors[input_key], input_key)
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.tensors.items()}

    def labelled_counts(self) -> dict[str, int]:
        return {k: int(label_mask(v).reshape(len(v), -1).any(1).sum()) for k, v in self.tensors.items()}


def check_finite(inputs: torch.Tensor, key: str) -> None:
    """Refuse NaN / inf in an input tensor [N, ...], naming its columns (flattened) and rows."""
    if not inputs.is_floating_point():
        return
    bad = ~torch.isfinite(inputs.flatten(1) if inputs.ndim > 1 else inputs[:, None])
    if bool(bad.any()):
        rows, columns = bad.any(1).nonzero().flatten().tolist(), bad.any(0).nonzero().flatten().tolist()
        raise DataError(
            f"input '{key}' has {int(bad.sum())} NaN / inf value(s) in column(s) {columns[:10]} of row(s) "
            f"{rows[:10]}{' ...' if len(rows) > 10 else ''} (counting from 0); inputs must be finite (only labels "
            "may be NaN, meaning unknown): impute or drop them, or read the file with the table dataset, which "
            "treats empty cells as missing"
        )
