from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from core.data import (
    CUDA_WORKERS,
    DictDataset,
    LabelCounting,
    Loading,
    Source,
    SourceStream,
    StreamingDataset,
    count_labelled,
    eval_loader,
    open_stream,
)
from core.errors import DataError


def _source(n: int = 50) -> Source:
    return Source("s", DictDataset({"inputs": torch.arange(n).float()[:, None], "y": torch.arange(n)}), ["y"])


def test_two_ranks_see_exactly_one_process_global_batch():
    one = SourceStream(_source(), Loading(batch_size=8), seed=1)
    ranks = [SourceStream(_source(), Loading(batch_size=4), seed=1, rank=r, world_size=2) for r in range(2)]
    assert len(one) == len(ranks[0]) == 6
    for _ in range(14):  # crosses an epoch boundary
        merged = torch.cat([next(r)["y"] for r in ranks]).sort().values
        assert torch.equal(next(one)["y"].sort().values, merged)


def test_stream_resumes_mid_epoch_on_the_exact_batch():
    stream = SourceStream(_source(), Loading(batch_size=8), seed=0)
    seen = [next(stream)["y"] for _ in range(9)]
    state = stream.state_dict()
    expected = [next(stream)["y"] for _ in range(5)]
    again = SourceStream(_source(), Loading(batch_size=8), seed=0)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, [next(again)["y"] for _ in range(5)], strict=True))
    assert state == {"epoch": 1, "offset": 3} and len(seen) == 9


@pytest.mark.parametrize("workers", [0, 1])
def test_one_loader_serves_every_epoch_and_a_resumed_stream_continues_exactly(workers):
    loading = Loading(batch_size=8, num_workers=workers)
    stream = SourceStream(_source(), loading, seed=0)
    first = [next(stream)["y"] for _ in range(4)]
    loader = stream.loader
    state = stream.state_dict()
    rest = [next(stream)["y"] for _ in range(10)]  # crosses two epoch boundaries (6 batches an epoch)
    assert stream.loader is loader and stream.epoch == 2
    assert loader.persistent_workers == (workers > 0)
    again = SourceStream(_source(), loading, seed=0)
    again.load_state_dict(state)
    resumed = [next(again)["y"] for _ in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(rest, resumed, strict=True))
    uninterrupted = SourceStream(_source(), loading, seed=0)
    assert all(torch.equal(a, next(uninterrupted)["y"]) for a in first + rest)


def test_evaluation_loaders_are_kept_per_rank_and_settings():
    source, loading = _source(), Loading(batch_size=8)
    loader = eval_loader(source, loading)
    assert eval_loader(source, loading) is loader
    assert eval_loader(source, loading, rank=1, world_size=2) is not loader
    assert [b["y"].tolist() for b in eval_loader(source, loading)] == [b["y"].tolist() for b in loader]
    other = dataclasses.replace(source, dataset=DictDataset({"inputs": torch.zeros(8, 1), "y": torch.zeros(8).long()}))
    assert eval_loader(other, loading) is not loader  # a copy with another dataset builds its own


def test_cuda_devices_default_to_workers_and_pinned_memory():
    cuda = Loading().resolved(torch.device("cuda"))
    assert cuda.pin_memory and cuda.num_workers == min(CUDA_WORKERS, os.cpu_count() or 1)
    cpu = Loading().resolved(torch.device("cpu"))
    assert cpu.num_workers == 0 and not cpu.pin_memory
    given = Loading(num_workers=1, pin_memory=False).resolved(torch.device("cuda"))
    assert given.num_workers == 1 and not given.pin_memory


def test_empty_or_too_small_sources_are_refused():
    with pytest.raises(DataError, match="'s' is empty"):
        SourceStream(_source(0), Loading(batch_size=8), seed=0)
    with pytest.raises(DataError, match="fewer than one global batch"):
        SourceStream(_source(10), Loading(batch_size=8), seed=0, world_size=2)


def test_dict_dataset_counts_labelled_samples():
    data = DictDataset(
        {
            "x": torch.zeros(4, 2),
            "y": torch.tensor([0, -1, 2, -100]),
            "z": torch.tensor([[1.0, float("nan")], [float("nan")] * 2, [0.0, 1.0], [1.0, 1.0]]),
        }
    )
    assert data.labelled_counts() == {"x": 4, "y": 2, "z": 3}
    with pytest.raises(DataError, match="same length"):
        DictDataset({"x": torch.zeros(3), "y": torch.zeros(4)})


def test_the_data_source_protocol_is_declared_not_probed(tmp_path):
    """The optional dataset members are protocols: a stream is recognised as one (opens its own
    stream, is refused by evaluation), a map-style dataset may count its labels itself."""
    from core.streams import JsonlShards

    path = tmp_path / "a.jsonl"
    path.write_text('{"inputs": [0.0], "y": 1}\n')
    stream, table = JsonlShards([path]), DictDataset({"inputs": torch.zeros(2, 1), "y": torch.tensor([0, -1])})
    assert isinstance(stream, StreamingDataset) and isinstance(stream, LabelCounting)
    assert not isinstance(table, StreamingDataset) and isinstance(table, LabelCounting)
    assert count_labelled(Source("t", table, ["y"]), {"y": "y"}) == {"y": 1}
    assert isinstance(open_stream(Source("t", table, ["y"]), Loading(batch_size=1), 0), SourceStream)
    with pytest.raises(DataError, match="is a stream"):
        eval_loader(Source("s", stream, ["y"]), Loading())
