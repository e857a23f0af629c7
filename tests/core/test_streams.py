"""Sharded, length-less training streams: disjoint shards per worker and rank, exact resume."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from core.data import Loading, Source, eval_loader, open_stream
from core.errors import DataError
from core.streams import HuggingFaceShards, JsonlShards, ShardStream

from .helpers import build_trainer, spawn, toy_config

SHARD_SIZES = [10, 13, 7, 9, 12, 11, 8, 14]


def write_shards(root: Path, sizes: list[int] = SHARD_SIZES) -> list[Path]:
    """Shard s holds records with ids s*100 + i; ``parity`` labels them, ``x`` is a noisy id."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    g = torch.Generator().manual_seed(0)
    for s, n in enumerate(sizes):
        path = root / f"part-{s:03d}.jsonl"
        lines = []
        for i in range(n):
            id_ = s * 100 + i
            x = (torch.randn(4, generator=g) + id_ % 2).tolist()
            lines.append(json.dumps({"inputs": x, "parity": id_ % 2, "id": id_}))
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


def _stream(paths, workers: int = 0, rank: int = 0, world_size: int = 1, batch: int = 4) -> ShardStream:
    source = Source("train", JsonlShards(paths), ["parity"])
    stream = open_stream(source, Loading(batch_size=batch, num_workers=workers), 0, rank, world_size)
    assert isinstance(stream, ShardStream)
    return stream


def _epoch(stream: ShardStream) -> list[list[int]]:
    epoch, out = stream.epoch, []
    while True:
        batch = next(stream)
        if stream.epoch != epoch:
            return out
        out.append(batch["id"].tolist())


def test_two_workers_read_disjoint_shards_and_every_shard_once_an_epoch(tmp_path):
    stream = _stream(write_shards(tmp_path), workers=2)
    batches = _epoch(stream)
    groups = stream.plan(0)
    shard_of = {g: {int(Path(stream.data.shards[i]).stem[-3:]) for i in shards} for g, shards in enumerate(groups)}
    assert not shard_of[0] & shard_of[1] and shard_of[0] | shard_of[1] == set(range(len(SHARD_SIZES)))
    for batch in batches:  # a batch comes from one worker: all its shards are that worker's
        assert len({next(g for g, s in shard_of.items() if i // 100 in s) for i in batch}) == 1
    ids = [i for b in batches for i in b]
    assert len(ids) == len(set(ids))
    per_group = [sum(SHARD_SIZES[s] for s in shard_of[g]) // 4 for g in (0, 1)]
    assert len(batches) == sum(per_group)  # each worker drops only its last incomplete batch


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_yields_exactly_the_remaining_batches(tmp_path, workers):
    paths = write_shards(tmp_path)
    full = _stream(paths, workers)
    seen = [next(full)["id"].tolist() for _ in range(7)]
    state = full.state_dict()
    rest = [next(full)["id"].tolist() for _ in range(30)]  # past the end of epoch 0 (22 batches)
    assert full.epoch >= 1
    resumed = _stream(paths, workers)
    resumed.load_state_dict(json.loads(json.dumps(state)))  # a checkpoint holds plain data
    assert [next(resumed)["id"].tolist() for _ in range(30)] == rest
    again = _stream(paths, workers)
    assert [next(again)["id"].tolist() for _ in range(37)] == seen + rest  # the order does not depend on timing


def test_a_stream_refuses_a_resume_with_other_workers_and_too_few_shards(tmp_path):
    paths = write_shards(tmp_path)
    state = _stream(paths, workers=2).state_dict()
    with pytest.raises(DataError, match=r"resume it with loading\.num_workers=2"):
        _stream(paths, workers=0).load_state_dict(state)
    with pytest.raises(DataError, match=r"2 shard\(s\) for 3 ranks"):
        _stream(paths[:2], world_size=3)
    with pytest.raises(DataError, match="'train' is a stream; evaluation reads indexable sources"):
        eval_loader(Source("train", JsonlShards(paths), ["parity"]), Loading())


def test_a_rank_whose_workers_cannot_fill_one_batch_raises_instead_of_spinning(tmp_path):
    """4 shards of 6 records, batch 8, 4 workers: each worker holds 6 records, so no batch is ever full."""
    stream = _stream(write_shards(tmp_path, [6] * 4), workers=4, batch=8)
    outcome: list[BaseException] = []

    def first_batch() -> None:
        try:
            next(stream)
        except BaseException as e:  # handed to the test thread
            outcome.append(e)

    thread = threading.Thread(target=first_batch, daemon=True)
    thread.start()
    thread.join(120)
    if thread.is_alive():

        def stop() -> bool:
            raise RuntimeError("stopped by the test")

        stream._pull = stop  # ends the spin: a failing run leaves no busy thread behind
        thread.join(30)
        pytest.fail("the stream started epoch after epoch without yielding or raising")
    assert len(outcome) == 1 and isinstance(outcome[0], DataError), outcome
    message = str(outcome[0])
    for fact in ("rank 0 of 1", "4 of 4 shard(s)", "4 loader worker(s)", "[6, 6, 6, 6] record(s)", "8 at a time"):
        assert fact in message, message
    assert "lower loading.num_workers" in message and "lower loading.batch_size" in message
    # one process reads all 24 records of the rank: the same data streams
    assert [len(b) for b in _epoch(_stream(write_shards(tmp_path, [6] * 4), workers=0, batch=8))] == [8] * 3


def test_a_hugging_face_streaming_dataset_is_sharded_by_its_files(tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = write_shards(tmp_path)
    hf = datasets.load_dataset("json", data_files=[str(p) for p in paths], split="train", streaming=True)
    source = Source("train", HuggingFaceShards(hf, size=sum(SHARD_SIZES)), ["parity"])
    stream = open_stream(source, Loading(batch_size=4), 0)
    ours = _stream(paths)
    assert len(source.dataset.shards) == len(paths)
    assert [next(stream)["id"].tolist() for _ in range(25)] == [next(ours)["id"].tolist() for _ in range(25)]


def _config(tmp_path: Path, shards: Path, **overrides):
    config = toy_config(
        tmp_path,
        **{"train.device": "cpu", "loading.batch_size": 4, "train.eval_every": 0, "train.log_every": 3, **overrides},
    )
    config.model.backbone = {"name": "mlp", "in_dim": 4, "hidden": [16], "dropout": 0.0}
    config.tasks = {"parity": {"type": "classification", "num_classes": 2}}
    config.data = {"name": "jsonl_shards", "train": str(shards / "*.jsonl"), "tasks": ["parity"]}
    return config


def _recording(trainer) -> list[list[int]]:
    seen: list[list[int]] = []
    batches = trainer._batches

    def record(chosen):
        out = batches(chosen)
        seen.append(out[0]["train"]["id"].tolist())
        return out

    trainer._batches = record
    return seen


def test_an_interrupted_run_resumes_on_the_same_remaining_samples(tmp_path):
    write_shards(tmp_path / "shards")
    steps = {"train.max_steps": 30}
    full = build_trainer(_config(tmp_path / "a", tmp_path / "shards", **steps), out_dir=None)
    seen_full = _recording(full)
    full.fit()
    first = build_trainer(_config(tmp_path / "b", tmp_path / "shards", **steps), out_dir=None)
    seen_first = _recording(first)
    for _ in range(11):
        first.train_step()
        first.step += 1
    state = first.state_dict()
    second = build_trainer(_config(tmp_path / "b", tmp_path / "shards", **steps), out_dir=None)
    second.load_state_dict(state)
    seen_second = _recording(second)
    second.fit()
    assert seen_first + seen_second == seen_full and len(seen_full) == 30
    for name, p in full.model.state_dict().items():
        torch.testing.assert_close(p, second.model.state_dict()[name])


def _rank_worker(rank: int, world_size: int, port: int, out: str, shards: str) -> None:
    from .test_distributed import _join

    _join(rank, world_size, port)
    try:
        trainer = build_trainer(_config(Path(out), Path(shards), **{"train.max_steps": 8}), out_dir=None)
        seen = _recording(trainer)
        trainer.fit()
        plan = trainer.streams["train"].plan(0)
        Path(out, f"rank{rank}.json").write_text(json.dumps({"seen": seen, "shards": plan[0]}))
    finally:
        dist.destroy_process_group()


def test_two_ranks_read_disjoint_shards(tmp_path):
    write_shards(tmp_path / "shards")
    spawn(_rank_worker, str(tmp_path), str(tmp_path / "shards"))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert not set(ranks[0]["shards"]) & set(ranks[1]["shards"])
    assert len(ranks[0]["shards"]) + len(ranks[1]["shards"]) == len(SHARD_SIZES)
    ids = [{i for batch in r["seen"] for i in batch} for r in ranks]
    assert not ids[0] & ids[1] and all(len(r["seen"]) == 8 for r in ranks)
    for r, rank_ids in zip(ranks, ids, strict=True):  # every sample comes from the rank's own shards
        names = sorted(str(p) for p in (tmp_path / "shards").glob("*.jsonl"))
        own = {int(Path(names[i]).stem[-3:]) for i in r["shards"]}
        assert {i // 100 for i in rank_ids} <= own


def test_a_config_names_a_sharded_source_and_trains_end_to_end(tmp_path):
    """Through ``jointtrain train``'s path: validation, best model, results and affinity on the stream."""
    from core.experiments.run import train
    from core.rundir.directory import RunDir

    write_shards(tmp_path / "shards")
    write_shards(tmp_path / "val", [40])
    config = _config(tmp_path, tmp_path / "shards", **{"train.max_steps": 12, "train.eval_every": 6})
    config.data["val"] = str(tmp_path / "val" / "*.jsonl")
    train(config)
    summary = RunDir(tmp_path / "run").summary()
    assert 0.0 <= summary["tasks"]["parity"]["accuracy"] <= 1.0
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
